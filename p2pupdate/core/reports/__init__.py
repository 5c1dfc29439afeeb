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

The package's modules: :mod:`.record` (the record, its checks and wire form),
:mod:`.book` (the newest report per node), :mod:`.outcomes` (outcomes, tallies, the
abort rule, the fleet view).
"""

from p2pupdate.core.reports.book import FORGED, NEW, OUTSIDER, REPLAYED, STALE, ReportBook
from p2pupdate.core.reports.outcomes import (
    AbortRule,
    abort_tally,
    channel_entry,
    fleet_view,
    next_outcome,
    node_outcome,
    rollout_tally,
)
from p2pupdate.core.reports.record import (
    FAILED_RESULTS,
    MAX_QUARANTINED,
    REPORT_DOMAIN,
    REPORT_FORMAT,
    RESULTS,
    STATES,
    ChannelReport,
    NodeReport,
    SignedReport,
    cut_reason,
    decode_report,
    fit_report,
    sign_report,
)

__all__ = [
    "FAILED_RESULTS",
    "FORGED",
    "MAX_QUARANTINED",
    "NEW",
    "OUTSIDER",
    "REPLAYED",
    "REPORT_DOMAIN",
    "REPORT_FORMAT",
    "RESULTS",
    "STALE",
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
