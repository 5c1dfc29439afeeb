"""Who knows whom at start: bootstrap peer lists for the simulation's topologies.

Pure functions over node indices and an injected ``random.Random``:

- ``ring``: node i is given the next ``degree`` nodes around the ring.
- ``random-k``: node i is given ``degree`` others at random; the graph is
  redrawn until it is connected (every node can hear every announcement).
- ``star``: nodes know nobody; only the authority connects to them, so every
  node fetches from the authority alone (the client-server baseline).

Late joiners are left out of the others' lists (nobody dials a node that is
not there yet) and get ``degree`` peers among the nodes started at once.
"""

from __future__ import annotations

import random
from collections.abc import Collection

__all__ = ["authority_targets", "bootstrap_peers", "is_connected"]


def is_connected(n: int, edges: list[list[int]], among: Collection[int] | None = None) -> bool:
    """Whether the undirected graph of ``edges`` (restricted to ``among``) is connected."""
    nodes = set(range(n)) if among is None else set(among)
    if not nodes:
        return True
    adj: dict[int, set[int]] = {i: set() for i in nodes}
    for i in nodes:
        for j in edges[i]:
            if j in nodes:
                adj[i].add(j)
                adj[j].add(i)
    start = next(iter(nodes))
    seen = {start}
    todo = [start]
    while todo:
        for j in adj[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return seen == nodes


def bootstrap_peers(
    topology: str, n: int, degree: int, rng: random.Random, late: Collection[int] = ()
) -> list[list[int]]:
    """For each node, the indices of the nodes it is started with (``--peer``)."""
    early = [i for i in range(n) if i not in late]
    m = len(early)
    k = min(degree, m - 1)
    edges: list[list[int]] = [[] for _ in range(n)]
    if topology == "star" or m == 0:
        return edges
    if topology == "ring":
        for pos, i in enumerate(early):
            edges[i] = [early[(pos + j) % m] for j in range(1, k + 1)]
    elif topology == "random-k":
        for _attempt in range(1000):
            for i in early:
                edges[i] = sorted(rng.sample([j for j in early if j != i], k))
            if is_connected(n, edges, early):
                break
        else:  # pragma: no cover - k >= 1 makes a connected draw overwhelmingly likely
            for pos, i in enumerate(early):
                edges[i] = sorted({*edges[i], early[(pos + 1) % m]} - {i})
    else:
        raise ValueError(f"unknown topology {topology!r}")
    for i in late:
        edges[i] = sorted(rng.sample(early, min(max(k, 1), m)))
    return edges


def authority_targets(topology: str, n: int, count: int, late: Collection[int] = ()) -> list[int]:
    """The nodes ``publish`` is given as ``--peer``: all of them in a star, else
    ``count`` nodes spread evenly around the ring of early nodes."""
    early = [i for i in range(n) if i not in late]
    if topology == "star":
        return early
    count = max(1, min(count, len(early)))
    return sorted({early[(j * len(early)) // count] for j in range(count)})
