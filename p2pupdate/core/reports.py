"""Node reports: one small signed record per node about itself, and the fleet view.

A report says what a node runs and how its last update went: node id, listen
address, p2pupdate version, and per followed channel the installed version, a
state, the version in progress, the last outcome (version, result, reason) and
the quarantined versions; plus a sequence number and the node's signed time.
It is signed with the node key and spread by gossip; every node keeps the one
with the highest sequence per node id (:class:`ReportBook`).

Wire form: a msgpack array ``[body bytes, signature]``; the body is the array
``[format, node id, seq, time, listen, agent, channels]`` with each channel
``[channel, installed, state, pending, progress, last, quarantined]`` and
``last`` either nil or ``[version, result, reason]``. As with announcements,
decoding re-encodes the body and rejects any other encoding, and the signature
covers a domain prefix plus the body bytes as received.

This module decides (decode, verify, which record wins, when one expires, what
the fleet looks like, whether a rollout's abort rule has fired); it sends and
stores nothing. Reports are heuristics: nothing is ever installed because of
one. At worst a forged set of reports pauses a rollout (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.signedwire import unpack_limited
from p2pupdate.errors import RemoteProtocolError

__all__ = [
    "FAILED_RESULTS",
    "REPORT_DOMAIN",
    "RESULTS",
    "STATES",
    "AbortRule",
    "ChannelReport",
    "NodeReport",
    "ReportBook",
    "SignedReport",
    "abort_tally",
    "channel_entry",
    "cut_reason",
    "decode_report",
    "fit_report",
    "fleet_view",
    "next_outcome",
    "node_outcome",
    "rollout_tally",
    "sign_report",
]

REPORT_FORMAT = 1
REPORT_DOMAIN = b"p2pupdate/report/v1\x00"
STATES = frozenset(
    {"idle", "downloading", "applying", "healthy", "rolled_back", "quarantined", "refused"}
)
RESULTS = frozenset(
    {
        "applied",
        "downloaded",
        "refused",
        "rolled_back",
        "quarantined",
        "update_failed",
        "yanked",
        "aborted",
    }
)
# Outcomes that count as a failed attempt for an abort rule (AWS IoT Jobs' "failed").
FAILED_RESULTS = frozenset({"rolled_back", "quarantined", "update_failed"})
# Quarantined versions listed per channel (the newest few): the record must fit 1 KiB.
MAX_QUARANTINED = 4
_MAX_AGENT = 32
_MAX_LISTEN = 64
# States and results that mean something needs a look: shown first by `fleet`.
_PROBLEMS = frozenset({"rolled_back", "quarantined", "refused", "update_failed", "aborted"})


def _text(name: str, value: object, maximum: int) -> str:
    if not isinstance(value, str) or len(value.encode()) > maximum:
        raise ValueError(f"{name} must be a string of at most {maximum} bytes")
    return value


def _version(value: object, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ValueError("a version must be a string")
    return validate_version(value, limits)


def cut_reason(reason: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """``reason`` cut to the report's limit (whole characters)."""
    data = reason.encode()[: limits.max_report_reason]
    return data.decode("utf-8", "ignore")


@dataclass(frozen=True)
class ChannelReport:
    """One followed channel in a report. Construction validates every field."""

    channel: str
    installed: str | None = None
    state: str = "idle"
    pending: str | None = None  # version being downloaded or applied
    progress: int = 0  # percent of ``pending`` downloaded
    last: tuple[str, str, str] | None = None  # (version, result, reason)
    quarantined: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate(DEFAULT_LIMITS)

    def validate(self, limits: Limits) -> None:
        validate_channel(self.channel)
        for v in (self.installed, self.pending):
            if v is not None:
                _version(v, limits)
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}")
        if not isinstance(self.progress, int) or isinstance(self.progress, bool):
            raise ValueError("progress must be an integer")
        if not 0 <= self.progress <= 100:
            raise ValueError("progress must be 0..100")
        if self.last is not None:
            if not (isinstance(self.last, tuple) and len(self.last) == 3):
                raise ValueError("last must be (version, result, reason)")
            _version(self.last[0], limits)
            if self.last[1] not in RESULTS:
                raise ValueError(f"unknown result {self.last[1]!r}")
            _text("reason", self.last[2], limits.max_report_reason)
        if not isinstance(self.quarantined, tuple) or len(self.quarantined) > MAX_QUARANTINED:
            raise ValueError(f"at most {MAX_QUARANTINED} quarantined versions")
        for q in self.quarantined:
            _version(q, limits)

    def to_list(self) -> list[object]:
        return [
            self.channel,
            self.installed,
            self.state,
            self.pending,
            self.progress,
            None if self.last is None else list(self.last),
            list(self.quarantined),
        ]


@dataclass(frozen=True)
class NodeReport:
    """The signed part of a report."""

    node_id: bytes
    seq: int
    time: int
    listen: str
    agent: str
    channels: tuple[ChannelReport, ...] = ()
    format_version: int = REPORT_FORMAT

    def __post_init__(self) -> None:
        if self.format_version != REPORT_FORMAT:
            raise ValueError(f"unsupported report format {self.format_version}")
        if not isinstance(self.node_id, bytes) or len(self.node_id) != 32:
            raise ValueError("node id must be 32 bytes")
        for name in ("seq", "time"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be an integer in 0..2^63")
        _text("listen", self.listen, _MAX_LISTEN)
        _text("agent", self.agent, _MAX_AGENT)
        if not isinstance(self.channels, tuple):
            raise ValueError("channels must be a tuple")
        if len({c.channel for c in self.channels}) != len(self.channels):
            raise ValueError("a channel is listed twice")

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [
                self.format_version,
                self.node_id,
                self.seq,
                self.time,
                self.listen,
                self.agent,
                [c.to_list() for c in self.channels],
            ],
            use_bin_type=True,
        )
        return data

    def channel(self, name: str) -> ChannelReport | None:
        for c in self.channels:
            if c.channel == name:
                return c
        return None


@dataclass(frozen=True)
class SignedReport:
    report: NodeReport
    body: bytes
    signature: bytes
    raw: bytes = field(default=b"", compare=False)

    def encode(self) -> bytes:
        if self.raw:
            return self.raw
        data: bytes = msgpack.packb([self.body, self.signature], use_bin_type=True)
        return data

    def verify(self) -> bool:
        try:
            nacl.signing.VerifyKey(self.report.node_id).verify(
                REPORT_DOMAIN + self.body, self.signature
            )
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return False
        return True


def sign_report(
    report: NodeReport, key: nacl.signing.SigningKey, limits: Limits = DEFAULT_LIMITS
) -> SignedReport:
    """Sign ``report`` with the node key; ValueError if it does not fit ``max_report``."""
    if bytes(key.verify_key) != report.node_id:
        raise ValueError("a report is signed by the node it is about")
    body = report.encode()
    sig = key.sign(REPORT_DOMAIN + body).signature
    signed = SignedReport(report, body, sig)
    raw = signed.encode()
    if len(raw) > limits.max_report:
        raise ValueError(f"report of {len(raw)} bytes exceeds {limits.max_report}")
    return SignedReport(report, body, sig, raw=raw)


def fit_report(
    report: NodeReport, key: nacl.signing.SigningKey, limits: Limits = DEFAULT_LIMITS
) -> SignedReport:
    """Sign ``report``, dropping channels from the end until it fits ``max_report``."""
    channels = list(report.channels)
    while True:
        try:
            return sign_report(
                NodeReport(
                    report.node_id,
                    report.seq,
                    report.time,
                    report.listen,
                    report.agent,
                    tuple(channels),
                ),
                key,
                limits,
            )
        except ValueError:
            if not channels:
                raise
            channels.pop()


def _unpack(data: bytes, limits: Limits) -> object:
    return unpack_limited(
        data,
        "report",
        max_str=limits.max_report,
        max_bin=limits.max_report,
        max_array=limits.max_report,
    )


def _channel_from(item: object, limits: Limits) -> ChannelReport:
    if not (isinstance(item, list) and len(item) == 7):
        raise ValueError("a channel entry is an array of 7")
    channel, installed, state, pending, progress, last, quarantined = item
    if last is not None:
        if not (isinstance(last, list) and len(last) == 3):
            raise ValueError("last must be [version, result, reason]")
        last = tuple(last)
    if not isinstance(quarantined, list):
        raise ValueError("quarantined must be a list")
    entry = ChannelReport(
        channel=channel,
        installed=installed,
        state=state,
        pending=pending,
        progress=progress,
        last=last,
        quarantined=tuple(quarantined),
    )
    entry.validate(limits)
    return entry


def decode_report(data: bytes, limits: Limits = DEFAULT_LIMITS) -> SignedReport:
    """Parse wire bytes into a SignedReport (form only), or raise RemoteProtocolError.

    The signature is not checked here (:meth:`SignedReport.verify`, or
    :meth:`ReportBook.offer`, which checks it before keeping anything).
    """
    if len(data) > limits.max_report:
        raise RemoteProtocolError(f"report of {len(data)} bytes exceeds {limits.max_report}")
    outer = _unpack(data, limits)
    if not (
        isinstance(outer, list)
        and len(outer) == 2
        and isinstance(outer[0], bytes)
        and isinstance(outer[1], bytes)
        and len(outer[1]) == 64
    ):
        raise RemoteProtocolError("report must be [bin body, 64-byte signature]")
    body, sig = outer
    fields = _unpack(body, limits)
    if not (isinstance(fields, list) and len(fields) == 7):
        raise RemoteProtocolError("report body must be an array of 7")
    fmt, node_id, seq, time, listen, agent, channels = fields
    try:
        if not isinstance(channels, list):
            raise ValueError("channels must be a list")
        report = NodeReport(
            node_id=node_id,
            seq=seq,
            time=time,
            listen=listen,
            agent=agent,
            channels=tuple(_channel_from(c, limits) for c in channels),
            format_version=fmt,
        )
    except (ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"invalid report: {exc}") from exc
    if report.encode() != body:
        raise RemoteProtocolError("report body is not canonically encoded")
    signed = SignedReport(report, body, sig)
    if signed.encode() != data:
        raise RemoteProtocolError("report is not canonically encoded")
    return SignedReport(report, body, sig, raw=bytes(data))


# -- keeping the newest report per node ----------------------------------------------
NEW = "new"
STALE = "stale"  # not newer than what we hold: changes nothing, not the sender's fault
FORGED = "forged"  # bad signature: the sender relayed junk
REPLAYED = "replayed"  # signed time outside the TTL window: an old record sent again
OUTSIDER = "outsider"  # not a fleet member (when membership is known)


class ReportBook:
    """The newest report per node id, capped in number and age.

    :meth:`offer` answers one of ``new`` (kept; relay it), ``stale`` (older or the
    same sequence: ignored; gossip races make this normal, so it is nobody's fault),
    ``forged`` or ``replayed`` (ignored, and the sender deserves a strike), or
    ``outsider`` (a node outside the fleet's membership: ignored).
    """

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        *,
        clock_skew: float = 300.0,
        member: Any = None,
    ) -> None:
        self.limits = limits
        self.clock_skew = clock_skew
        # Optional ``member(node_id) -> bool`` (fleet membership, when configured).
        self.member = member
        self._reports: dict[bytes, SignedReport] = {}

    def __len__(self) -> int:
        return len(self._reports)

    def get(self, node_id: bytes) -> SignedReport | None:
        return self._reports.get(node_id)

    def all(self) -> list[SignedReport]:
        return list(self._reports.values())

    def offer(self, signed: SignedReport, now: float) -> str:
        r = signed.report
        held = self._reports.get(r.node_id)
        if held is not None and r.seq <= held.report.seq:
            return STALE
        if r.time > now + self.clock_skew or now - r.time > self.limits.report_ttl:
            return REPLAYED
        if not signed.verify():
            return FORGED
        if self.member is not None and not self.member(r.node_id):
            return OUTSIDER
        if held is None and len(self._reports) >= self.limits.max_reports:
            # Full: the report renewed longest ago goes (that node is the likeliest gone).
            oldest = min(self._reports.values(), key=lambda s: s.report.time)
            del self._reports[oldest.report.node_id]
        self._reports[r.node_id] = signed
        return NEW

    def expire(self, now: float) -> list[bytes]:
        """Drop reports not renewed within the TTL; returns their node ids."""
        gone = [
            nid for nid, s in self._reports.items() if now - s.report.time > self.limits.report_ttl
        ]
        for nid in gone:
            del self._reports[nid]
        return gone

    def summary(self) -> tuple[tuple[bytes, int], ...]:
        """(8-byte node id prefix, seq) of every report held, for anti-entropy."""
        return tuple(sorted((nid[:8], s.report.seq) for nid, s in self._reports.items()))

    def newer_than(self, theirs: Mapping[bytes, int]) -> list[SignedReport]:
        """Reports we hold that a peer with summary ``theirs`` (prefix -> seq) lacks or
        holds older. Two node ids sharing a prefix may hide one of them from a single
        exchange; the next heartbeat carries it anyway."""
        return [s for nid, s in self._reports.items() if theirs.get(nid[:8], -1) < s.report.seq]


# -- rollout tallies and the abort rule --------------------------------------------------
@dataclass(frozen=True)
class AbortRule:
    """Abort once at least ``minimum`` nodes attempted and ``percent``% of them failed."""

    percent: int
    minimum: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.percent, int) or not 1 <= self.percent <= 100:
            raise ValueError("abort percentage must be 1..100")
        if not isinstance(self.minimum, int) or not 1 <= self.minimum <= 1_000_000:
            raise ValueError("abort minimum must be 1..1000000")

    def fired(self, failed: int, attempted: int) -> bool:
        return attempted >= self.minimum and failed * 100 >= self.percent * attempted


def _failed(entry: ChannelReport, version: str) -> bool:
    if version in entry.quarantined:
        return True
    last = entry.last
    return last is not None and last[0] == version and last[1] in FAILED_RESULTS


def _attempted(entry: ChannelReport, version: str) -> bool:
    if _failed(entry, version) or entry.installed == version:
        return True
    return entry.state == "applying" and entry.pending == version


def abort_tally(reports: Iterable[SignedReport], channel: str, version: str) -> tuple[int, int]:
    """(failed, attempted) for ``version`` on ``channel``, one vote per node id."""
    failed = attempted = 0
    seen: set[bytes] = set()
    for s in reports:
        if s.report.node_id in seen:
            continue
        seen.add(s.report.node_id)
        entry = s.report.channel(channel)
        if entry is None:
            continue
        if _failed(entry, version):
            failed += 1
        if _attempted(entry, version):
            attempted += 1
    return failed, attempted


def node_outcome(entry: ChannelReport, version: str) -> tuple[str, str]:
    """Where one node stands on ``version``: (applied | downloaded | downloading |
    refused | failed | aborted | pending, reason)."""
    last = entry.last if entry.last is not None and entry.last[0] == version else None
    if entry.installed == version and entry.state != "applying":
        return "applied", ""
    if _failed(entry, version):
        if last is not None and last[1] in FAILED_RESULTS:
            return "failed", f"{last[1]}: {last[2]}" if last[2] else last[1]
        return "failed", "quarantined"
    if last is not None and last[1] == "refused":
        return "refused", last[2]
    if last is not None and last[1] == "aborted":
        return "aborted", last[2]
    if last is not None and last[1] == "yanked":
        return "refused", "yanked"
    if last is not None and last[1] == "downloaded":
        return "downloaded", ""
    if entry.pending == version and entry.state == "downloading":
        return "downloading", ""
    if entry.pending == version and entry.state == "applying":
        return "downloaded", ""
    return "pending", ""


def rollout_tally(
    reports: Iterable[SignedReport], channel: str, version: str
) -> dict[bytes, tuple[str, str, str]]:
    """node id -> (outcome, reason, listen) for every node following ``channel``."""
    out: dict[bytes, tuple[str, str, str]] = {}
    for s in reports:
        entry = s.report.channel(channel)
        if entry is None:
            continue
        outcome, reason = node_outcome(entry, version)
        out[s.report.node_id] = (outcome, reason, s.report.listen)
    return out


# -- the fleet view --------------------------------------------------------------------
def _row(s: SignedReport, c: ChannelReport, now: float) -> dict[str, Any]:
    last = None
    if c.last is not None:
        last = {"version": c.last[0], "result": c.last[1], "reason": c.last[2]}
    return {
        "node_id": s.report.node_id.hex(),
        "short_id": s.report.node_id.hex()[:12],
        "listen": s.report.listen,
        "agent": s.report.agent,
        "channel": c.channel,
        "version": c.installed,
        "state": c.state,
        "pending": c.pending,
        "progress": c.progress,
        "last": last,
        "quarantined": list(c.quarantined),
        "last_seen": s.report.time,
        "age": max(0, round(now - s.report.time)),
    }


def _rank(row: dict[str, Any]) -> int:
    last = row["last"]
    if row["state"] in _PROBLEMS or (last is not None and last["result"] in _PROBLEMS):
        return 0
    if row["state"] in ("downloading", "applying"):
        return 1
    return 2


def fleet_view(
    reports: Iterable[SignedReport], now: float, channel: str | None = None
) -> dict[str, Any]:
    """The fleet as ``p2pupdate fleet --json`` prints it (docs/operations.md).

    ``channels``: per channel and installed version, how many nodes are on it and
    how many are downloading, healthy, rolled back, quarantined or refused (with
    the reasons counted); ``nodes``: one row per node and channel, problems first,
    then nodes busy downloading or applying, then the rest, each group by channel,
    version and node id.
    """
    rows: list[dict[str, Any]] = []
    nodes: set[bytes] = set()
    channels: dict[str, dict[str, dict[str, Any]]] = {}
    for s in reports:
        nodes.add(s.report.node_id)
        for c in s.report.channels:
            if channel is not None and c.channel != channel:
                continue
            rows.append(_row(s, c, now))
            per = channels.setdefault(c.channel, {})
            key = c.installed if c.installed is not None else "none"
            v = per.setdefault(
                key,
                {
                    "nodes": 0,
                    "downloading": 0,
                    "applying": 0,
                    "healthy": 0,
                    "rolled_back": 0,
                    "quarantined": 0,
                    "refused": {},
                },
            )
            v["nodes"] += 1
            if c.state in ("downloading", "applying", "healthy", "rolled_back", "quarantined"):
                v[c.state] += 1
            if c.last is not None and c.last[1] == "refused":
                reason = c.last[2] or "unknown"
                v["refused"][reason] = v["refused"].get(reason, 0) + 1
    rows.sort(key=lambda r: (_rank(r), r["channel"], str(r["version"]), r["node_id"]))
    return {
        "format": 1,
        "nodes_reporting": len(nodes),
        "channels": {ch: dict(sorted(per.items())) for ch, per in sorted(channels.items())},
        "nodes": rows,
    }


# -- what a node says about one channel ------------------------------------------------
# Refusals that say nothing about the release (this node already has it or a newer
# one, is outside the rollout, heard it twice): not an outcome worth reporting.
_QUIET_REFUSALS = frozenset({"not_newer", "outside_rollout", "duplicate", "not_newest"})
_OUTCOME_EVENTS = frozenset(
    {
        "update_refused",
        "download_complete",
        "update_complete",
        "update_failed",
        "rolled_back",
        "quarantined",
        "yanked",
        "rollout_aborted",
    }
)


def _reason(*parts: object) -> str:
    text = " ".join(str(p).strip().splitlines()[0] for p in parts if p and str(p).strip())
    return cut_reason(text)


def next_outcome(
    prev: tuple[str, str, str] | None, event: str, fields: Mapping[str, Any]
) -> tuple[str, str, str] | None:
    """A channel's last outcome (version, result, reason) after ``event``."""
    if event not in _OUTCOME_EVENTS:
        return prev
    version = fields.get("new_version") if event == "update_complete" else fields.get("version")
    if not isinstance(version, str):
        return prev
    reason = fields.get("reason")
    same = prev is not None and prev[0] == version
    if event == "update_refused":
        if reason in _QUIET_REFUSALS:
            return prev
        return (version, "refused", _reason(reason))
    if event == "download_complete":
        if same and prev is not None and prev[1] != "downloaded":
            return prev  # an outcome of this version already says more
        return (version, "downloaded", "")
    if event == "update_complete":
        return (version, "applied", "")
    if event == "update_failed":
        return (version, "update_failed", _reason(reason, fields.get("detail")))
    if event == "rolled_back":
        if same and prev is not None and prev[1] == "update_failed":
            return (version, "rolled_back", prev[2])  # keep the failure's detail
        return (version, "rolled_back", _reason(reason))
    if event == "quarantined":
        if same and prev is not None and prev[1] in ("rolled_back", "update_failed"):
            return prev
        return (version, "quarantined", _reason(reason))
    if event == "yanked":
        return (version, "yanked", _reason(fields.get("reason")))
    if same and prev is not None and prev[1] in ("applied", *FAILED_RESULTS):
        return prev  # this node's own attempt says more than the fleet's abort
    failed, attempted = fields.get("failed"), fields.get("attempted")
    return (version, "aborted", _reason(f"{failed} of {attempted} failed"))


def channel_entry(
    channel: str,
    *,
    installed: str | None,
    downloading: tuple[str, float] | None,
    applying: str | None,
    last: tuple[str, str, str] | None,
    quarantined: Iterable[str],
) -> ChannelReport:
    """One channel of this node's report, its state derived from what it knows."""
    quarantined = tuple(sorted(set(quarantined)))[-MAX_QUARANTINED:]
    pending: str | None = None
    progress = 0
    if applying is not None:
        state, pending, progress = "applying", applying, 100
    elif downloading is not None:
        state, pending = "downloading", downloading[0]
        progress = max(0, min(100, int(downloading[1] * 100)))
    elif last is not None and last[0] != installed and last[1] in ("rolled_back", "yanked"):
        state = "rolled_back"
    elif last is not None and last[0] != installed and last[1] == "quarantined":
        state = "quarantined"
    elif last is not None and last[0] != installed and last[1] in ("refused", "aborted"):
        state = "refused"
    else:
        state = "healthy" if installed is not None else "idle"
    return ChannelReport(channel, installed, state, pending, progress, last, quarantined)
