"""Child process for the applicator crash tests.

Usage: ``python -m tests.shell.apply_faults_child CONFIG.json``

Runs one ``Applicator.apply`` as the node would. With ``P2PUPDATE_FAULT`` set,
the applicator SIGKILLs this process at that point. With ``"sigterm": true``
in the config it behaves like a node on SIGTERM: the install is cancelled.
Prints ``{"result": ...}`` when apply returns.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from p2pupdate.shell.install.applicator import Applicator, TargetSpec

__all__ = ["main"]


def _emit(event: str, fields: dict[str, Any]) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _run(cfg: dict[str, Any]) -> None:
    app = Applicator(Path(cfg["data"]), Path(cfg["backups"]), _emit)
    spec = TargetSpec(
        cfg["channel"],
        Path(cfg["target"]),
        is_dir=cfg["is_dir"],
        health_cmd=cfg["health_cmd"],
        restart_cmd=cfg["restart_cmd"],
        version=cfg["target_version"],
        # Generous: a passing check must not fail on a loaded machine.
        health_timeout=60.0,
        confirm_window=60.0,
    )
    async with trio.open_nursery() as nursery:
        if cfg.get("sigterm"):
            nursery.start_soon(_cancel_on_sigterm, nursery.cancel_scope)
        result = await app.apply(
            spec, cfg["version"], Path(cfg["package"]), bytes.fromhex(cfg["package_id"])
        )
        print(json.dumps({"result": result}), flush=True)
        nursery.cancel_scope.cancel()


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    trio.run(_run, cfg)


if __name__ == "__main__":
    main()
