"""Pure decisions of the applicator: what to install, when to retry, when to give up.

Nothing here touches a file, a process or a clock. The shell
(:mod:`p2pupdate.shell.install.applicator`) asks these
functions and state machines what to do, carries it out, and feeds the
results back in, with ``now`` passed as a number.

Two decisions live here (the upgrade gate is the one act gate,
:func:`p2pupdate.core.policy.install_decision`):

* :class:`ConfirmMachine` -- one install's attempts: swap, optional restart,
  health checks inside a confirmation window, a bounded number of attempts;
* :func:`recovery_decision` -- what to do on start when an unconfirmed
  install was left behind.

(The self-update launcher's boot counting is :mod:`p2pupdate.core.boot`.)

The path rules for a directory target's tar archive are :mod:`p2pupdate.core.archive`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from p2pupdate.core.reasons import Reason
from p2pupdate.core.versions import (
    MAX_VERSION_LEN,
    compare_versions,
    is_newer,
    normalize_version,
    parse_version,
    version_in,
)
from p2pupdate.errors import ApplyError

__all__ = [
    "BAD_ARCHIVE",
    "BAD_VERSION",
    "BELOW_MIN_VERSION",
    "DISK_FULL",
    "HASH_MISMATCH",
    "HEALTH_CHECK_FAILED",
    "HEALTH_TIMEOUT",
    "INSTALL_FAILED",
    "INTERRUPTED",
    "MAX_VERSION_LEN",
    "NOT_CONFIRMED",
    "NOT_NEWER",
    "NO_BACKUP",
    "OPERATOR_ROLLBACK",
    "PACKAGE_MISSING",
    "QUARANTINED",
    "RESTART_FAILED",
    "RESTART_NOT_STARTED",
    "ROLLBACK_FAILED",
    "TOO_LARGE",
    "TOO_MANY_ATTEMPTS",
    "ConfirmAction",
    "ConfirmMachine",
    "ConfirmState",
    "Confirmed",
    "GiveUp",
    "PersistAttempt",
    "RecoverFinishRollback",
    "RecoverGiveUp",
    "RecoverRetry",
    "RecoverWait",
    "RecoveryDecision",
    "RunHealthCheck",
    "RunRestart",
    "WaitUntil",
    "check_interval",
    "compare_versions",
    "is_newer",
    "normalize_version",
    "parse_version",
    "quarantines",
    "recovery_decision",
    "version_in",
]

# ---------------------------------------------------------------------------
# Reasons: codes of :class:`p2pupdate.core.reasons.Reason`, named here for the applicator.
# ---------------------------------------------------------------------------

NOT_NEWER = Reason.NOT_NEWER
QUARANTINED = Reason.QUARANTINED
TOO_LARGE = Reason.TOO_LARGE
HASH_MISMATCH = Reason.HASH_MISMATCH
BELOW_MIN_VERSION = Reason.BELOW_MIN_VERSION
BAD_VERSION = Reason.BAD_VERSION
BAD_ARCHIVE = Reason.BAD_ARCHIVE
HEALTH_CHECK_FAILED = Reason.HEALTH_CHECK_FAILED
HEALTH_TIMEOUT = Reason.HEALTH_TIMEOUT
NOT_CONFIRMED = Reason.NOT_CONFIRMED
RESTART_FAILED = Reason.RESTART_FAILED
RESTART_NOT_STARTED = Reason.RESTART_NOT_STARTED
TOO_MANY_ATTEMPTS = Reason.TOO_MANY_ATTEMPTS
INTERRUPTED = Reason.INTERRUPTED
ROLLBACK_FAILED = Reason.ROLLBACK_FAILED
DISK_FULL = Reason.DISK_FULL
INSTALL_FAILED = Reason.INSTALL_FAILED
PACKAGE_MISSING = Reason.PACKAGE_MISSING
NO_BACKUP = Reason.NO_BACKUP
OPERATOR_ROLLBACK = Reason.OPERATOR_ROLLBACK


# ---------------------------------------------------------------------------
# One install's attempts: restart, health checks, confirmation window
# ---------------------------------------------------------------------------


def check_interval(window: float) -> float:
    """Pause between health checks inside a confirmation window."""
    return min(1.0, max(0.05, window / 20))


class ConfirmState(enum.Enum):
    """States of :class:`ConfirmMachine`."""

    READY = "ready"  # nothing started yet
    INSTALLING = "installing"  # attempt persisted; the shell puts the new version in place
    RESTARTING = "restarting"  # restart command running
    CHECKING = "checking"  # a health check is running
    WAITING = "waiting"  # between health checks, inside the window
    CONFIRMED = "confirmed"  # terminal: keep the new version
    GAVE_UP = "gave_up"  # terminal: roll back, restart, quarantine
    ERROR = "error"  # sticky: the shell misused the machine


@dataclass(frozen=True)
class PersistAttempt:
    """Persist ``attempt`` as the attempt counter, put the new version in place
    (if it is not already), then call :meth:`ConfirmMachine.on_installed`."""

    attempt: int


@dataclass(frozen=True)
class RunRestart:
    """Run the restart command, killed after ``timeout`` s; report with ``on_restart_result``."""

    timeout: float


@dataclass(frozen=True)
class RunHealthCheck:
    """Run the health check, killed after ``timeout`` s; report with ``on_health_result``."""

    timeout: float


@dataclass(frozen=True)
class WaitUntil:
    """Sleep until ``deadline`` (same clock as ``now``), then call ``on_timer``."""

    deadline: float


@dataclass(frozen=True)
class Confirmed:
    """The new version is healthy: commit it."""


@dataclass(frozen=True)
class GiveUp:
    """Roll back to the last good version, restart it, and quarantine the new one
    unless ``quarantine`` is False (the host was at fault, not the release)."""

    reason: str
    quarantine: bool = True


def quarantines(reason: str) -> bool:
    """Whether a rollback for ``reason`` quarantines the version (host faults do not)."""
    return reason != RESTART_NOT_STARTED


ConfirmAction = PersistAttempt | RunRestart | RunHealthCheck | WaitUntil | Confirmed | GiveUp

# Which input is legal in which state: anything else is a bug in the shell.
_LEGAL: dict[str, frozenset[ConfirmState]] = {
    "start": frozenset({ConfirmState.READY}),
    "installed": frozenset({ConfirmState.INSTALLING}),
    "restart_result": frozenset({ConfirmState.RESTARTING}),
    "health_result": frozenset({ConfirmState.CHECKING}),
    "timer": frozenset({ConfirmState.WAITING}),
}


@dataclass
class ConfirmMachine:
    """Attempts of one install of one version, as an explicit state machine.

    An *attempt* is: persist the counter, put the new version in place, run the
    restart command (if any), then health checks until one passes. With a
    restart command the checks are repeated inside ``window`` seconds after the
    restart; a window that runs out, or a restart that fails, is a failed
    attempt, and the next attempt restarts again, up to ``max_attempts`` in
    all (counting ``attempts_done`` from earlier runs that crashed). Without a
    restart command one failed check is final: re-running a program's
    ``--version`` gives the same answer.
    """

    attempts_done: int
    max_attempts: int
    window: float
    has_restart: bool
    health_timeout: float
    state: ConfirmState = ConfirmState.READY
    deadline: float = 0.0
    last_failure: str = ""
    checks: int = field(default=0)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.attempts_done < 0:
            raise ValueError("attempts_done must not be negative")
        if self.window <= 0 or self.health_timeout <= 0:
            raise ValueError("window and health_timeout must be positive")

    # -- inputs ------------------------------------------------------------

    def start(self, now: float) -> ConfirmAction:
        """Begin: the first attempt, or give up at once if the bound is used up."""
        self._enter("start")
        if self.attempts_done >= self.max_attempts:
            self.last_failure = TOO_MANY_ATTEMPTS
            self.state = ConfirmState.GAVE_UP
            return GiveUp(TOO_MANY_ATTEMPTS)
        return self._next_attempt()

    def on_installed(self, now: float) -> ConfirmAction:
        """The new version is in place (for this attempt)."""
        self._enter("installed")
        if self.has_restart:
            self.state = ConfirmState.RESTARTING
            return RunRestart(self.health_timeout)
        self.state = ConfirmState.CHECKING
        self.deadline = now + self.health_timeout
        self.checks += 1
        return RunHealthCheck(self.health_timeout)

    def on_restart_result(self, ok: bool, now: float, *, started: bool = True) -> ConfirmAction:
        """The restart command finished (``ok``: exit 0 in time).

        ``started`` False: it could not be started at all. That says nothing about
        the release, so this install gives up at once without quarantine (the
        caller tries again later), instead of using up the attempts.
        """
        self._enter("restart_result")
        if not started:
            self.last_failure = RESTART_NOT_STARTED
            self.state = ConfirmState.GAVE_UP
            return GiveUp(RESTART_NOT_STARTED, quarantine=False)
        if not ok:
            return self._attempt_failed(RESTART_FAILED)
        self.state = ConfirmState.CHECKING
        self.deadline = now + self.window
        self.checks += 1
        return RunHealthCheck(min(self.health_timeout, self.window))

    def on_health_result(
        self, ok: bool, now: float, reason: str = HEALTH_CHECK_FAILED
    ) -> ConfirmAction:
        """A health check finished; ``reason`` says how it failed when not ``ok``."""
        self._enter("health_result")
        if ok:
            self.state = ConfirmState.CONFIRMED
            return Confirmed()
        if not self.has_restart:
            return self._attempt_failed(reason)
        wake = now + check_interval(self.window)
        if wake < self.deadline:
            self.state = ConfirmState.WAITING
            return WaitUntil(wake)
        return self._attempt_failed(NOT_CONFIRMED)

    def on_timer(self, now: float) -> ConfirmAction:
        """The pause between checks is over."""
        self._enter("timer")
        remaining = self.deadline - now
        if remaining <= 0:
            return self._attempt_failed(NOT_CONFIRMED)
        self.state = ConfirmState.CHECKING
        self.checks += 1
        return RunHealthCheck(min(self.health_timeout, remaining))

    # -- internals ---------------------------------------------------------

    @property
    def done(self) -> bool:
        """True in a terminal state."""
        return self.state in (ConfirmState.CONFIRMED, ConfirmState.GAVE_UP)

    def _enter(self, event: str) -> None:
        if self.state is ConfirmState.ERROR or self.state not in _LEGAL[event]:
            previous = self.state
            self.state = ConfirmState.ERROR
            raise ApplyError("illegal_transition", f"{event} in state {previous.value}")

    def _next_attempt(self) -> ConfirmAction:
        self.attempts_done += 1
        self.state = ConfirmState.INSTALLING
        return PersistAttempt(self.attempts_done)

    def _attempt_failed(self, reason: str) -> ConfirmAction:
        self.last_failure = reason
        if self.has_restart and self.attempts_done < self.max_attempts:
            return self._next_attempt()
        self.state = ConfirmState.GAVE_UP
        return GiveUp(reason)


# ---------------------------------------------------------------------------
# Recovery of an unconfirmed install found on start
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoverRetry:
    """Roll back (done by the shell first), then install the same package again."""


@dataclass(frozen=True)
class RecoverWait:
    """Roll back and wait: the package is gone, the node fetches it and calls apply again."""


@dataclass(frozen=True)
class RecoverGiveUp:
    """Roll back and quarantine the version: it used up its attempts."""

    reason: str


@dataclass(frozen=True)
class RecoverFinishRollback:
    """A rollback was under way: finish it and quarantine the version."""

    reason: str


RecoveryDecision = RecoverRetry | RecoverWait | RecoverGiveUp | RecoverFinishRollback


def recovery_decision(
    phase: str,
    attempts: int,
    max_attempts: int,
    package_available: bool,
    failure_reason: str | None = None,
) -> RecoveryDecision:
    """What to do with a pending install record found on start.

    ``phase`` is ``installing`` (the install was interrupted: it may be retried,
    and the interrupted try already counted as one attempt) or ``rolling_back``
    (the version had already failed).
    """
    if phase == "rolling_back":
        return RecoverFinishRollback(failure_reason or INTERRUPTED)
    if phase != "installing":
        raise ValueError(f"unknown pending phase {phase!r}")
    if attempts >= max_attempts:
        return RecoverGiveUp(TOO_MANY_ATTEMPTS)
    if not package_available:
        return RecoverWait()
    return RecoverRetry()
