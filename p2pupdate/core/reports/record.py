"""The node report record: what one node says about itself, signed, and its wire form.

What it does
    :class:`ChannelReport`, :class:`NodeReport` and :class:`SignedReport` with their
    checks; :func:`sign_report`, :func:`fit_report` (the record cut to its size limit)
    and :func:`decode_report` (canonical encoding and signature checked).

What it does not do
    Keep reports (:mod:`.book`) or read a fleet out of them (:mod:`.outcomes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import nacl.exceptions
import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.signedwire import unpack_limited
from p2pupdate.errors import RemoteProtocolError

__all__ = [
    "FAILED_RESULTS",
    "MAX_QUARANTINED",
    "REPORT_DOMAIN",
    "REPORT_FORMAT",
    "RESULTS",
    "STATES",
    "ChannelReport",
    "NodeReport",
    "SignedReport",
    "cut_reason",
    "decode_report",
    "fit_report",
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
