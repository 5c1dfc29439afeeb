"""SIGHUP: reload the node's config (``--config`` and flags) without dropping connections.

What changes live: the trusted keys, the trust threshold and the validity cap (a key
removed is revoked at once: announcements held only under it are dropped), the
targets (a new or changed target gets the channel's newest release now), the upload
and download limits, and the log level. Every other setting (listen address, data
dir, connection counts, fleet membership, ...) needs a restart; the log line names
those that changed. A config that no longer loads changes nothing: one ERROR line
says why, and the node runs on with what it had.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from p2pupdate.core.policy import TrustConfig
from p2pupdate.errors import UsageError
from p2pupdate.shell.agent import Agent
from p2pupdate.shell.net.node import Node
from p2pupdate.shell.nodeconfig import NodeSettings
from p2pupdate.shell.transfer.swarm import Swarm

__all__ = ["LIVE_SETTINGS", "Reloader"]

log = logging.getLogger("p2pupdate.reload")

# Settings a reload applies without a restart.
LIVE_SETTINGS = frozenset(
    {
        "trust",
        "trust_threshold",
        "max_announcement_validity",
        "targets",
        "max_upload_speed",
        "max_download_speed",
        "log_level",
    }
)


class Reloader:
    """Holds the settings in force and applies a newly loaded set to the running parts."""

    def __init__(
        self,
        settings: NodeSettings,
        load: Callable[[], NodeSettings],
        node: Node,
        swarm: Swarm,
        agent: Agent,
    ) -> None:
        self.settings = settings
        self._load = load
        self.node = node
        self.swarm = swarm
        self.agent = agent

    async def reload(self) -> tuple[list[str], list[str]]:
        """Load the config again and apply it: (settings applied, settings needing a restart)."""
        try:
            new = self._load()
        except UsageError as exc:
            log.error("SIGHUP: config not reloaded, the node runs on unchanged: %s", exc)
            return [], []
        old = self.settings
        changed = [
            f.name
            for f in dataclasses.fields(NodeSettings)
            if getattr(old, f.name) != getattr(new, f.name)
        ]
        live = [name for name in changed if name in LIVE_SETTINGS]
        restart = [name for name in changed if name not in LIVE_SETTINGS]
        if {"trust", "trust_threshold", "max_announcement_validity"} & set(live):
            self.node.reload_trust(
                TrustConfig(
                    new.trust, new.trust_threshold, max_validity=new.max_announcement_validity
                )
            )
        if {"max_upload_speed", "max_download_speed"} & set(live):
            self.swarm.set_limits(new.max_upload_speed, new.max_download_speed)
        if "log_level" in live:
            logging.getLogger().setLevel(new.log_level.upper())
        # The settings in force: the live ones from the new load, the rest as started.
        self.settings = dataclasses.replace(old, **{name: getattr(new, name) for name in live})
        if "targets" in live:
            await self.agent.reload_targets(new.targets)
        log.info(
            "SIGHUP: config reloaded; applied: %s; not applied until restart: %s",
            ", ".join(live) or "nothing changed",
            ", ".join(restart) or "none",
        )
        return live, restart
