"""Settings for the whole suite.

Hypothesis' per-example deadline (200 ms by default) is a wall-clock bound: on a loaded
or slow machine a perfectly correct parser trips it. The suite must pass on a machine
twice as slow and under load, so no example has a deadline; the example counts stay.

``XDG_STATE_HOME`` points into a temporary directory for the whole run, so nothing the
commands keep per user (``publish``'s history) lands in the real home directory; every
subprocess a test starts inherits it.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import settings

settings.register_profile("p2pupdate", deadline=None)
settings.load_profile("p2pupdate")

_STATE_HOME = tempfile.TemporaryDirectory(prefix="p2pupdate-tests-state-")
os.environ["XDG_STATE_HOME"] = _STATE_HOME.name
