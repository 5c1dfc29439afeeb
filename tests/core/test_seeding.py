"""Tests of the super-seeder, and a whole swarm (seed + 10 downloaders) run in lockstep."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import blake3
import pytest
from bitarray import bitarray
from bitarray.util import ones, zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.download import (
    AnnounceHave,
    AskChunk,
    Ban,
    CancelAsk,
    Completed,
    DownloadAction,
    Downloader,
    DownloadState,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.core.seeding import SuperSeeder
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError


def seeder(n: int, window: int = 8, seed: int = 0) -> SuperSeeder[str]:
    return SuperSeeder(n, rng=random.Random(seed), window=window)


def bits_of(n: int, indices: set[int]) -> bitarray:
    b = zeros(n)
    for i in indices:
        b[i] = 1
    return b


# ---------------------------------------------------------------------------------------
# Revealing
# ---------------------------------------------------------------------------------------


def test_distinct_peers_are_shown_distinct_chunks() -> None:
    ss = seeder(100, window=8)
    shown: list[int] = []
    for p in "ABCDE":
        ss.on_peer_joined(p, zeros(100))
        got = ss.reveal(p)
        assert len(got) == 8
        shown += got
    assert len(set(shown)) == 40
    assert ss.reveal("A") == []  # its window is full


def test_window_is_topped_up_when_a_chunk_is_held() -> None:
    ss = seeder(50, window=4)
    ss.on_peer_joined("A", zeros(50))
    first = ss.reveal("A")
    ss.on_sent("A", first[0])
    assert ss.outstanding("A") == 4 and ss.reveal("A") == []  # on its way, not held yet
    ss.on_peer_have("A", [first[0]])
    assert ss.outstanding("A") == 3
    (more,) = ss.reveal("A")
    assert more not in first


def test_never_shows_what_the_peer_holds_or_was_shown() -> None:
    ss = seeder(6, window=8)
    ss.on_peer_joined("A", bits_of(6, {0, 1, 2}))
    assert sorted(ss.reveal("A")) == [3, 4, 5]
    assert ss.reveal("A") == []


def test_no_second_send_while_a_chunk_has_not_gone_out() -> None:
    ss = seeder(4, window=1)
    ss.on_peer_joined("A", zeros(4))
    ss.on_peer_joined("B", zeros(4))
    (a,) = ss.reveal("A")
    assert ss.should_serve("A", a)
    ss.on_sent("A", a)
    ss.on_peer_have("A", [a])
    # B learned of `a` from A's HAVE but asks the seed: refused, A has it.
    assert not ss.should_serve("B", a)
    assert ss.not_out == 3
    for p in ("C", "D", "E"):
        ss.on_peer_joined(p, zeros(4))
        (c,) = ss.reveal(p)
        assert ss.should_serve(p, c)
        ss.on_sent(p, c)
    assert ss.all_out  # everything is out: the seed serves anyone now
    assert ss.should_serve("B", a)
    assert ss.total_sent == 4 and all(ss.sent_count(i) == 1 for i in range(4))


def test_chunk_whose_only_holder_left_is_sent_again() -> None:
    ss = seeder(3, window=1)
    ss.on_peer_joined("A", zeros(3))
    ss.on_peer_joined("B", zeros(3))
    (a,) = ss.reveal("A")
    ss.on_sent("A", a)
    ss.on_peer_have("A", [a])
    assert not ss.should_serve("B", a)
    ss.on_peer_gone("A")
    assert ss.not_out == 3
    assert ss.should_serve("B", a)
    # And it is shown again: a fresh peer gets one of the three, `a` included.
    shown = set()
    for p in ("C", "D", "E"):
        ss.on_peer_joined(p, zeros(3))
        shown.update(ss.reveal(p))
    assert a in shown


def test_chunks_stuck_with_a_stalled_peer_are_shown_to_others() -> None:
    ss = seeder(4, window=8)
    ss.on_peer_joined("stalled", zeros(4))
    assert sorted(ss.reveal("stalled")) == [0, 1, 2, 3]
    ss.on_peer_joined("B", zeros(4))
    assert sorted(ss.reveal("B")) == [0, 1, 2, 3]  # nothing else is left to show
    assert ss.should_serve("B", 0)
    ss.on_sent("B", 0)
    assert not ss.should_serve("stalled", 0)  # 0 is out and 1..3 are not
    assert ss.should_serve("stalled", 1)


def test_after_every_chunk_is_out_the_rarest_are_shown() -> None:
    ss = seeder(3, window=8)
    ss.on_peer_joined("A", bits_of(3, {0, 1}))
    ss.on_peer_joined("B", bits_of(3, {0}))
    ss.on_peer_joined("C", zeros(3))
    assert ss.reveal("C") == [2]  # the one that is not out; not 0 or 1 yet
    ss.on_peer_have("A", [2])
    assert ss.all_out
    assert ss.reveal("C") == [1, 0]  # 1 is held once, 0 twice


def test_a_full_peer_makes_everything_out() -> None:
    ss = seeder(5)
    ss.on_peer_joined("mirror", ones(5))
    ss.on_peer_joined("A", zeros(5))
    assert ss.all_out and ss.should_serve("A", 3)


def test_refusal_forgets_the_reveal_so_it_can_be_shown_again() -> None:
    ss = seeder(2, window=2)
    ss.on_peer_joined("A", zeros(2))
    ss.on_peer_joined("B", zeros(2))
    assert sorted(ss.reveal("A")) == [0, 1]
    assert sorted(ss.reveal("B")) == [0, 1]
    ss.on_sent("A", 0)
    assert not ss.should_serve("B", 0)
    assert ss.revealed_to("B") == bits_of(2, {1})
    ss.on_sent("A", 1)  # now all out; B may be shown 0 again
    assert ss.reveal("B") == [0]


def test_a_peer_that_never_passes_chunks_on_is_shown_no_more_while_others_fetch() -> None:
    ss: SuperSeeder[str] = SuperSeeder(12, rng=random.Random(0), window=2, spread=2)
    ss.on_peer_joined("hoarder", zeros(12))
    ss.on_peer_joined("B", zeros(12))
    kept = ss.reveal("hoarder")
    for i in kept:
        assert ss.should_serve("hoarder", i)
        ss.on_sent("hoarder", i)
    ss.on_peer_have("hoarder", kept)
    assert ss.unpassed("hoarder") == 2
    assert len(ss.reveal("B")) == 2  # B is fetching from us ...
    assert ss.reveal("hoarder") == []  # ... so the hoarder gets nothing new meanwhile
    # B fetches its two and passes them on to the hoarder, which passes nothing on.
    b = sorted(ss.revealed_to("B").search(1))
    for i in b:
        ss.on_sent("B", i)
    ss.on_peer_have("B", b)
    ss.on_peer_have("hoarder", b)
    assert ss.passed_on("B") == 2 and ss.passed_on("hoarder") == 0
    assert len(ss.reveal("B")) == 2 and ss.reveal("hoarder") == []


def test_a_peer_alone_or_beside_idle_peers_is_not_held_back() -> None:
    ss: SuperSeeder[str] = SuperSeeder(12, rng=random.Random(0), window=2, spread=2)
    ss.on_peer_joined("A", zeros(12))
    for _ in range(6):  # nobody to pass them on to: it gets the whole package from us
        got = ss.reveal("A")
        assert len(got) == 2
        for i in got:
            ss.on_sent("A", i)
        ss.on_peer_have("A", got)
    assert ss.all_out


def test_a_rare_chunk_held_only_by_a_slow_peer_is_sent_again_before_other_rare_ones() -> None:
    for seed in range(6):  # whatever the random tie-break among the rarest would pick
        ss: SuperSeeder[str] = SuperSeeder(6, rng=random.Random(seed), window=2, spread=2)
        ss.on_peer_joined("other", bits_of(6, {4, 5}))  # had 4 and 5 before we came
        ss.on_peer_joined("slow", zeros(6))
        ss.on_peer_joined("fast", zeros(6))
        rare = ss.reveal("slow")
        for i in rare:
            ss.on_sent("slow", i)
        ss.on_peer_have("slow", rare)
        rest = ss.reveal("fast")
        assert set(rare) | set(rest) == {0, 1, 2, 3}
        for i in rest:
            ss.on_sent("fast", i)
        ss.on_peer_have("fast", rest)
        ss.on_peer_have("slow", rest)  # the fast peer passed its chunks on at once
        ss.on_peer_have("other", rest)
        assert ss.all_out and ss.unpassed("slow") == 2 and ss.unpassed("fast") == 0
        # 0, 1, 4 and 5 are each held by one peer; the two the slow one got from us
        # and has not passed on are shown (and served) first.
        again = ss.reveal("fast")
        assert sorted(again) == sorted(rare)
        assert all(ss.should_serve("fast", i) for i in again)
        for i in again:
            ss.on_sent("fast", i)
        ss.on_peer_have("fast", again)
        assert ss.unpassed("slow") == 0 and ss.passed_on("slow") == 0


def test_misuse_and_malformed_input() -> None:
    ss = seeder(4)
    with pytest.raises(RemoteProtocolError):
        ss.on_peer_joined("A", zeros(5))
    ss.on_peer_joined("A", zeros(4))
    with pytest.raises(LocalProtocolError):
        ss.on_peer_joined("A", zeros(4))
    with pytest.raises(RemoteProtocolError):
        ss.on_peer_have("A", [4])
    with pytest.raises(RemoteProtocolError):
        ss.should_serve("A", -1)
    with pytest.raises(LocalProtocolError):
        ss.on_sent("A", 9)
    assert ss.reveal("nobody") == []
    with pytest.raises(ValueError):
        SuperSeeder(4, rng=random.Random(0), window=0)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_random_operations_keep_the_send_once_rules(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12), label="nchunks")
    window = data.draw(st.integers(1, 4), label="window")
    ss = seeder(n, window=window, seed=data.draw(st.integers(0, 9)))
    names = ["A", "B", "C", "D"]
    held: dict[str, set[int]] = {}  # live peers -> chunks they hold
    transit: dict[str, set[int]] = {}  # live peers -> chunks the seed is sending them
    shown: dict[str, set[int]] = {}  # live peers -> chunks revealed and not refused
    sole: dict[str, set[int]] = {}  # live peers -> got from the seed, held by nobody else

    def out() -> set[int]:
        return set().union(*held.values(), *transit.values()) if held else set()

    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        op = data.draw(st.integers(0, 5))
        p = data.draw(st.sampled_from(names))
        if op == 0 and p not in held:
            have = {i for i in range(n) if data.draw(st.integers(0, 3)) == 0}
            ss.on_peer_joined(p, bits_of(n, have))
            held[p], transit[p], shown[p], sole[p] = have, set(), set(), set()
            for q in sole:
                sole[q] -= have
        elif op == 1 and p in held:
            ss.on_peer_gone(p)
            del held[p], transit[p], shown[p], sole[p]
        elif op == 2 and p in held:  # p fetches a chunk from another peer that holds it
            others = sorted(set().union(*(h for q, h in held.items() if q != p)) - held[p])
            if others:
                i = data.draw(st.sampled_from(others))
                held[p].add(i)
                transit[p].discard(i)
                for q in sole:  # passed on
                    sole[q].discard(i)
                ss.on_peer_have(p, [i])
        elif op == 3 and p in held and shown[p] - held[p] - transit[p]:
            i = data.draw(st.sampled_from(sorted(shown[p] - held[p] - transit[p])))
            before = out()
            if ss.should_serve(p, i):
                # Never a second send while some chunk has not gone out.
                assert i not in before or len(before) == n
                ss.on_sent(p, i)
                transit[p].add(i)
            else:
                assert i in before and len(before) < n
                shown[p].discard(i)
        elif op == 4 and p in held and transit[p]:  # a chunk from the seed arrives
            i = data.draw(st.sampled_from(sorted(transit[p])))
            transit[p].discard(i)
            if not any(i in h for h in held.values()):
                sole[p].add(i)
            for q in sole:
                if q != p:
                    sole[q].discard(i)
            held[p].add(i)
            ss.on_peer_have(p, [i])
        elif op == 5 and p in held:
            not_out = set(range(n)) - out()
            unshown = not_out - set().union(*shown.values()) - held[p]
            got = ss.reveal(p)
            assert len(set(got)) == len(got)
            assert not set(got) & (held[p] | shown[p]), "shown twice to one peer"
            if not_out:
                assert set(got) <= not_out, "an out chunk shown while another is not out"
            fresh = [i for i in got if i in unshown]
            assert len(fresh) == min(len(got), len(unshown)), "stole before using fresh"
            shown[p].update(got)
            assert (
                ss.outstanding(p)
                == len((shown[p] | transit[p]) - held[p])
                <= max(window, len(transit[p] - shown[p]))
            )
        assert ss.not_out == n - len(out())
        for q in held:  # what each peer got from us and has not passed on
            assert ss.unpassed(q) == len(sole[q])


# ---------------------------------------------------------------------------------------
# A whole swarm, in lockstep: one tick = one chunk uploaded per node
# ---------------------------------------------------------------------------------------


@dataclass
class Swarm:
    """Seed + downloaders with equal upload capacity; messages arrive one tick later."""

    nchunks: int
    npeers: int
    super_seed: bool = True
    chunk_size: int = 32
    upload_per_tick: int = 1
    leave: dict[int, str] = field(default_factory=dict)  # tick -> peer that leaves for good
    # Chunks per tick of some nodes ("seed" or "d<k>"), others upload_per_tick; fractions
    # accumulate (0.1 = one chunk every ten ticks).
    rates: dict[str, float] = field(default_factory=dict)
    # Who knows whom among the downloaders (None: everyone); the seed knows everyone.
    neighbours: dict[str, set[str]] | None = None
    pipeline_depth: int = 8
    # Ticks of measured service kept in flight per source (the downloader's
    # pipeline_seconds, in ticks: a tick here is one message delay).
    pipeline_seconds: float = 4.0
    tick: int = 0

    def __post_init__(self) -> None:
        self.content = random.Random(1).randbytes(self.nchunks * self.chunk_size - 5)
        cs = self.chunk_size
        self.chunks = [self.content[i : i + cs] for i in range(0, len(self.content), cs)]
        hashes = [blake3.blake3(c).digest() for c in self.chunks]
        self.package_id = blake3.blake3(self.content).digest()
        self.names = [f"d{i}" for i in range(self.npeers)]
        self.ss: SuperSeeder[str] = SuperSeeder(self.nchunks, rng=random.Random(99))
        self.dls: dict[str, Downloader[str]] = {
            name: Downloader(
                self.package_id,
                len(self.content),
                hashes,
                rng=random.Random(k),
                pipeline_depth=self.pipeline_depth,
                pipeline_seconds=self.pipeline_seconds,
                request_timeout=1e9,
                chunk_size=cs,
            )
            for k, name in enumerate(self.names)
        }
        self.alive = set(self.names)
        self.disk: dict[str, dict[int, bytes]] = {name: {} for name in self.names}
        # Each node's pending requests, per requester, served round-robin so that no
        # peer monopolises an uploader (what the shell's upload slots do).
        self.queue: dict[str, dict[str, deque[int]]] = {name: {} for name in [*self.names, "seed"]}
        self.done_at: dict[str, int] = {}
        self.uploaded: dict[str, int] = dict.fromkeys(["seed", *self.names], 0)
        self.inbox: list[tuple[str, str, str, object]] = []
        self.credit: dict[str, float] = dict.fromkeys(["seed", *self.names], 0.0)
        # (tick, node that got it from the seed) for every chunk the seed sent
        self.seed_sends: list[tuple[int, str]] = []
        for name in self.names:
            seed_bits = zeros(self.nchunks) if self.super_seed else ones(self.nchunks)
            self.send("seed", name, "bitfield", seed_bits)
            for other in [*self.linked(name), "seed"]:
                self.send(name, other, "bitfield", zeros(self.nchunks))

    def linked(self, name: str) -> list[str]:
        """The downloaders ``name`` is connected to."""
        if self.neighbours is None:
            return [other for other in self.names if other != name]
        return sorted(self.neighbours[name])

    def send(self, src: str, dst: str, kind: str, arg: object) -> None:
        self.inbox.append((src, dst, kind, arg))

    def act(self, node: str, actions: list[DownloadAction[str]]) -> None:
        dl = self.dls[node]
        for a in actions:
            if isinstance(a, AskChunk):
                self.send(node, a.peer, "request", a.index)
            elif isinstance(a, CancelAsk):
                self.send(node, a.peer, "cancel", a.index)
            elif isinstance(a, WriteChunk):
                assert a.data == self.chunks[a.index]
                self.disk[node][a.index] = a.data
                self.act(node, dl.on_chunk_written(a.index))
            elif isinstance(a, AnnounceHave):
                for other in [*sorted(self.alive & set(self.linked(node))), "seed"]:
                    self.send(node, other, "have", list(a.indices))
            elif isinstance(a, VerifyPackage):
                whole = b"".join(self.disk[node][i] for i in range(self.nchunks))
                self.act(node, dl.on_package_verified(whole == self.content))
            elif isinstance(a, Completed):
                self.done_at[node] = self.tick
            elif isinstance(a, Ban):  # pragma: no cover - nobody lies here
                raise AssertionError(a)

    def deliver(self, src: str, dst: str, kind: str, arg: object) -> None:
        live = {*self.alive, "seed"}
        if src not in live or dst not in live:
            return
        now = float(self.tick)
        if dst == "seed":
            if kind == "bitfield":
                assert isinstance(arg, bitarray)
                self.ss.on_peer_joined(src, arg)
            elif kind == "have":
                assert isinstance(arg, list)
                self.ss.on_peer_have(src, arg)
        else:
            dl = self.dls[dst]
            if kind == "bitfield":
                assert isinstance(arg, bitarray)
                self.act(dst, dl.on_peer_bitfield(src, arg, now))
            elif kind == "have":
                assert isinstance(arg, list)
                self.act(dst, dl.on_peer_have(src, arg, now))
            elif kind == "chunk":
                assert isinstance(arg, tuple)
                self.act(dst, dl.on_chunk(src, arg[0], arg[1], now))
            elif kind == "reject":
                assert isinstance(arg, int)
                self.act(dst, dl.on_reject(src, arg, now))
        if kind == "request":
            assert isinstance(arg, int)
            self.queue[dst].setdefault(src, deque()).append(arg)
        elif kind == "cancel" and arg in self.queue[dst].get(src, ()):
            self.queue[dst][src].remove(arg)  # type: ignore[arg-type]

    def serve(self, node: str) -> None:
        self.credit[node] += self.rates.get(node, float(self.upload_per_tick))
        q = self.queue[node]
        if not q:
            self.credit[node] = min(self.credit[node], 1.0)  # idle time is not banked
        while self.credit[node] >= 1 and q:
            peer = next(iter(q))
            requests = q.pop(peer)
            if not requests:  # emptied by cancels
                continue
            i = requests.popleft()
            if requests:
                q[peer] = requests  # to the back of the round
            if peer not in self.alive:
                continue
            if node == "seed":
                ok = not self.super_seed or self.ss.should_serve(peer, i)
            else:
                ok = self.dls[node].has_chunk(i)
            if not ok:
                self.send(node, peer, "reject", i)
                continue
            self.send(node, peer, "chunk", (i, self.chunks[i]))
            self.uploaded[node] += 1
            self.credit[node] -= 1
            if node == "seed":
                self.seed_sends.append((self.tick, peer))
            if node == "seed" and self.super_seed:
                self.ss.on_sent(peer, i)

    def step(self) -> None:
        self.tick += 1
        if self.tick in self.leave:
            gone = self.leave[self.tick]
            self.alive.discard(gone)
            self.ss.on_peer_gone(gone)
            for name in self.alive:
                self.act(name, self.dls[name].on_peer_gone(gone, float(self.tick)))
        inbox, self.inbox = self.inbox, []
        for msg in inbox:
            self.deliver(*msg)
        for node in ["seed", *sorted(self.alive)]:
            self.serve(node)
        if self.super_seed:
            for name in sorted(self.alive):
                shown = self.ss.reveal(name)
                if shown:
                    self.send("seed", name, "have", shown)
        for name in sorted(self.alive):
            dl = self.dls[name]
            self.act(name, dl.on_timer(float(self.tick)))
            self.act(name, dl.poll(float(self.tick)))

    def run(self, limit: int) -> None:
        while self.tick < limit and any(n not in self.done_at for n in self.alive):
            self.step()
        for name in self.alive:
            assert self.dls[name].state is DownloadState.COMPLETE, name
            assert b"".join(self.disk[name][i] for i in range(self.nchunks)) == self.content


def test_swarm_seed_sends_about_one_copy_and_everyone_finishes_near_the_bound() -> None:
    n = 300
    swarm = Swarm(n, 10)
    swarm.run(limit=4 * n)
    ratio = swarm.uploaded["seed"] / n
    finish = max(swarm.done_at.values())
    # Kumar-Ross bound here: max(F/u_s, N*F/(u_s + N*u)) = n ticks (every node uploads 1/tick).
    print(f"super-seed: seed sent {ratio:.3f}x, all done in {finish / n:.3f}x the bound")
    assert ratio <= 1.10
    assert finish <= 1.10 * n
    # Everybody served everybody: peers uploaded the rest.
    assert sum(swarm.uploaded[p] for p in swarm.names) >= 10 * n - swarm.uploaded["seed"]


def test_swarm_without_super_seeding_makes_the_seed_send_more() -> None:
    n = 150
    plain = Swarm(n, 10, super_seed=False)
    plain.run(limit=10 * n)
    sup = Swarm(n, 10)
    sup.run(limit=10 * n)
    assert sup.uploaded["seed"] < plain.uploaded["seed"]


def test_swarm_survives_a_peer_leaving_with_chunks_only_it_had() -> None:
    n = 200
    swarm = Swarm(n, 10, leave={n // 3: "d4", n // 2: "d7"})
    swarm.run(limit=6 * n)
    assert swarm.alive == set(swarm.names) - {"d4", "d7"}
    assert swarm.uploaded["seed"] / n <= 1.3  # re-sends only what only the leavers had


def test_swarm_with_slow_uploaders_finishes_near_the_bound_for_unequal_uploads() -> None:
    """Seed and 8 peers upload 4 chunks a tick, two peers 0.4: the slow two must neither
    hold chunks the others wait for nor finish late."""
    n = 320
    rates = {"seed": 4.0, **{f"d{k}": 4.0 for k in range(8)}, "d8": 0.4, "d9": 0.4}
    swarm = Swarm(n, 10, rates=rates)
    swarm.run(limit=20 * n)
    bound = max(n / rates["seed"], 10 * n / sum(rates.values()))
    finish = max(swarm.done_at.values())
    to_slow = sum(1 for _, p in swarm.seed_sends if p in ("d8", "d9"))
    print(
        f"slow uploaders: done in {finish / bound:.3f}x the bound, seed sent "
        f"{swarm.uploaded['seed'] / n:.2f}x, {to_slow} chunks to the slow two"
    )
    assert finish <= 1.25 * bound  # (1.55x before slow peers were measured)
    assert max(swarm.done_at[p] for p in ("d8", "d9")) <= finish
    assert finish - min(swarm.done_at.values()) <= 0.1 * bound


def ring(npeers: int, each_side: int) -> dict[str, set[str]]:
    """Each downloader linked to the ``each_side`` next ones on both sides of a ring."""
    names = [f"d{i}" for i in range(npeers)]
    out: dict[str, set[str]] = {name: set() for name in names}
    for i, name in enumerate(names):
        for k in range(1, each_side + 1):
            other = names[(i + k) % npeers]
            out[name].add(other)
            out[other].add(name)
    return out


@pytest.mark.parametrize(
    ("rates", "limit"),
    [
        # (1.20x the bound, seed 1.17x, with 16-deep pipelines at every source)
        ({"seed": 4.0, **{f"d{k}": 4.0 for k in range(10)}}, 1.15),
        # (1.23x, seed 1.31x)
        ({"seed": 4.0, **{f"d{k}": 4.0 for k in range(8)}, "d8": 0.4, "d9": 0.4}, 1.15),
    ],
    ids=["uniform", "two-slow"],
)
def test_swarm_of_six_neighbours_each_keeps_short_queues_and_nears_the_bound(
    rates: dict[str, float], limit: float
) -> None:
    """Each node linked to 6 of the 9 others, pipelines 16 deep, an upload of 4 chunks a
    tick shared by the node's downloaders: kept to 4 ticks of measured service, requests
    wait little at each holder, so fresh chunks move on fast and a second holder with
    idle upload gets asked."""
    n = 320
    swarm = Swarm(n, 10, rates=rates, neighbours=ring(10, 3), pipeline_depth=16)
    swarm.run(limit=20 * n)
    bound = max(n / rates["seed"], 10 * n / sum(rates.values()))
    finish = max(swarm.done_at.values())
    print(
        f"six neighbours: {finish / bound:.3f}x the bound, seed {swarm.uploaded['seed'] / n:.2f}x"
    )
    assert finish <= limit * bound
    assert swarm.uploaded["seed"] <= 1.2 * n
