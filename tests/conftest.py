"""Settings for the whole suite.

Hypothesis' per-example deadline (200 ms by default) is a wall-clock bound: on a loaded
or slow machine a perfectly correct parser trips it. The suite must pass on a machine
twice as slow and under load, so no example has a deadline; the example counts stay.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("p2pupdate", deadline=None)
settings.load_profile("p2pupdate")
