"""Linux network namespaces for ``network = "netns"`` runs: setup and teardown.

Each slot (the authority, then each node) gets its own namespace with one
veth link to a bridge in the root namespace and its own address in a /24
picked at random among those not in use on the host. The bridge carries an
address too, so the harness (and its adversarial peer) reaches every slot.
A slot's upload is shaped by the kernel with a ``tbf`` qdisc on its end of
the veth, so the network enforces the limit, not the node.

Names carry a run-unique prefix, ``p2s<pid hex>x<counter>``, short enough for
15-character interface names. :meth:`NetnsNetwork.teardown` removes every
namespace and link the run made (it is idempotent and runs on any exit);
:func:`sweep_stale` removes those of earlier runs whose harness process is gone
(a harness killed by SIGKILL cannot clean up after itself).

This module runs ``ip`` and ``tc``; it starts no node and decides nothing
about the scenario.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from p2pupdate.errors import UsageError
from p2pupdate.shell.fsutil import pid_alive

__all__ = ["NetnsError", "NetnsNetwork", "check_netns_available", "sweep_stale"]

_counter = itertools.count()
_NAME_RE = re.compile(r"^p2s([0-9a-f]+)x\d")
_MAX_SLOTS = 250


class NetnsError(UsageError):
    """The host cannot run a netns scenario (not root, no iproute2, no namespaces)."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def check_netns_available() -> None:
    """Raise NetnsError with one clear line unless namespaces can be made here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NetnsError(
            'network = "netns" needs root (it creates network namespaces, a bridge and '
            'tc qdiscs); run as root or use network = "loopback"'
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsError(
            f'network = "netns" needs iproute2 ({" and ".join(missing)} not found); '
            'install it (apt-get install iproute2) or use network = "loopback"'
        )
    probe = f"p2s{os.getpid():x}x{next(_counter)}-probe"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        raise NetnsError(f"cannot create a network namespace here: {made.stderr.strip()}")
    _run(["ip", "netns", "del", probe], check=False)


def sweep_stale() -> list[str]:
    """Remove namespaces and links of earlier runs whose harness is dead; their names."""
    removed: list[str] = []
    if shutil.which("ip") is None:
        return removed
    ns_list = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for line in ns_list:
        name = line.split(" ")[0].strip()
        m = _NAME_RE.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    links = _run(["ip", "-o", "link", "show"], check=False).stdout.split("\n")
    for line in links:
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _NAME_RE.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            _run(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed


def _pick_subnet(rng: random.Random) -> str:
    """A 10.x.y.0/24 prefix ("10.x.y") that no address or route on the host uses."""
    used = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    used += _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    for _ in range(500):
        prefix = f"10.{rng.randint(64, 250)}.{rng.randint(1, 254)}"
        if f"{prefix}." not in used and f" {prefix.rsplit('.', 1)[0]}.0.0/16" not in used:
            return prefix
    raise NetnsError("no free 10.x.y.0/24 subnet found for the simulation bridge")


@dataclass
class NetnsNetwork:
    """``slots`` namespaces on one bridge; ``rates[i]`` bytes/s shapes slot i's upload."""

    slots: int
    rates: Sequence[int]
    prefix: str = field(default_factory=lambda: f"p2s{os.getpid():x}x{next(_counter) % 10}")
    subnet: str = ""
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    up: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= _MAX_SLOTS:
            raise ValueError(f"1..{_MAX_SLOTS} slots")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}b"

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, slot: int) -> str:
        return f"{self.prefix}-{slot}"

    def address(self, slot: int) -> str:
        return f"{self.subnet}.{slot + 2}"

    def wrap(self, slot: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside slot ``slot``'s namespace (``ip netns exec`` execs it)."""
        return ["ip", "netns", "exec", self.namespace(slot), *argv]

    def setup(self, rng: random.Random | None = None) -> None:
        """Create the bridge, the namespaces, the veth pairs, addresses and qdiscs."""
        check_netns_available()
        sweep_stale()
        self.subnet = _pick_subnet(rng or random.Random())
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise
        self.up = True

    def _setup(self) -> None:
        br = self.bridge
        self.links.append(br)
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_address}/24", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        for slot in range(self.slots):
            ns = self.namespace(slot)
            host_end, ns_end = f"{self.prefix}h{slot}", f"{self.prefix}n{slot}"
            self.namespaces.append(ns)
            _run(["ip", "netns", "add", ns])
            self.links.append(host_end)
            _run(
                ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", ns]
            )
            _run(["ip", "link", "set", host_end, "master", br, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(slot)}/24", "dev", ns_end])
            _run(["ip", "-n", ns, "link", "set", ns_end, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            rate = self.rates[slot] if slot < len(self.rates) else 0
            if rate > 0:
                # burst: about 20 ms at the rate, at least a few full frames.
                burst = max(16 * 1024, rate // 50)
                _run(
                    [
                        "tc", "-n", ns, "qdisc", "add", "dev", ns_end, "root", "tbf",
                        "rate", f"{rate * 8}bit", "burst", str(burst), "latency", "100ms",
                    ]
                )  # fmt: skip

    def teardown(self) -> None:
        """Remove everything this run made; never raises, safe to call twice."""
        for ns in self.namespaces:
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                # Only processes inside this run's own namespace: started by this run.
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.kill(int(pid), 9)
            _run(["ip", "netns", "del", ns], check=False)
        for link in reversed(self.links):
            _run(["ip", "link", "del", link], check=False)
        self.namespaces.clear()
        self.links.clear()
        self.up = False

    def leftovers(self) -> list[str]:
        """Names with this run's prefix still present on the host (for tests)."""
        names = [
            line.split(" ")[0]
            for line in _run(["ip", "netns", "list"], check=False).stdout.split("\n")
        ]
        for line in _run(["ip", "-o", "link", "show"], check=False).stdout.split("\n"):
            parts = line.split(":")
            if len(parts) >= 2:
                names.append(parts[1].strip().split("@")[0])
        return [n for n in names if n.startswith(self.prefix)]
