"""Crash points for the kill -9 tests: the one place fault injection lives.

When the environment variable ``P2PUPDATE_FAULT`` names one of
:data:`FAULT_POINTS`, the process SIGKILLs itself on reaching that point. It
exists for the crash tests only (docs/applying.md and docs/self-update.md list
the points); with the variable unset every call is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "FAULT_POINTS", "fault"]

FAULT_ENV = "P2PUPDATE_FAULT"
# Where a crash test may kill the applicator; docs/applying.md says what each means.
FAULT_POINTS = (
    "after_pending",  # pending record persisted, nothing else touched
    "mid_backup",  # backup's staging file (in backup_dir) linked, or half written
    "after_backup",  # backup of the current target durable
    "mid_stage",  # staging file half written
    "after_stage",  # staging file complete and fsynced, not yet renamed
    "after_swap",  # new file renamed over the target, directory fsynced
    "after_restart",  # restart command ran
    "after_health",  # health check passed, install not yet committed
    "after_commit",  # installed version persisted, pending record gone
    "before_restore",  # health failed; rollback record persisted
    "mid_restore",  # restore staging file written, not yet renamed
    "after_restore",  # old file back in place, state not yet updated
    "after_extract",  # directory target: release unpacked, not yet live
    "after_switch",  # directory target: symlink switched to the new release
    # Self-update (p2pupdate.selfupdate; docs/self-update.md):
    "self_after_download",  # a release of p2pupdate downloaded and verified
    "self_mid_install",  # release venv created, its packages not yet installed
    "self_after_install",  # release complete (marker written), `current` untouched
    "self_after_arm",  # `previous` points at the running release
    "self_after_switch",  # `current` switched to the new release, not yet re-exec'd
)


def fault(point: str) -> None:
    """SIGKILL this process if ``P2PUPDATE_FAULT`` names ``point`` (crash tests only)."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
