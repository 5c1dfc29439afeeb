"""The agent's answers to the control socket: status, fleet, apply, rollback, quarantine."""

from __future__ import annotations

from typing import Any

from p2pupdate.core.reasons import Reason
from p2pupdate.core.versions import is_newer
from p2pupdate.shell.agent.base import ChannelState
from p2pupdate.shell.agent.downloads import Downloads
from p2pupdate.shell.agent.feedback import Feedback
from p2pupdate.shell.install.applicator import TargetSpec

__all__ = ["Control"]


class Control(Downloads, Feedback):
    """Control-socket requests and ``status`` (see the module doc)."""

    # -- control socket -------------------------------------------------------------
    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        channel = request.get("channel")
        if op == "fleet":
            if channel is not None and not isinstance(channel, str):
                return {"ok": False, "usage": True, "error": "channel must be a string"}
            return {"ok": True, **self.fleet(channel)}
        if op in ("apply", "rollback", "quarantine_clear"):
            target = self.targets.get(channel) if isinstance(channel, str) else None
            if target is None:
                return {"ok": False, "usage": True, "error": f"no target for channel {channel!r}"}
            if op == "apply":
                return await self._control_apply(target)
            if op == "rollback":
                if await self.applicator.rollback(target):
                    return {"ok": True, "message": f"{target.channel} rolled back"}
                return {"ok": False, "error": f"rollback failed: {self._last_failure(target)}"}
            version = request.get("version")
            if not isinstance(version, str):
                return {"ok": False, "usage": True, "error": "version missing"}
            if self.applicator.quarantine_clear(target.channel, version):
                return {"ok": True, "message": f"quarantine of {channel} {version} lifted"}
            return {"ok": False, "usage": True, "error": f"{channel} {version} is not quarantined"}
        return {"ok": False, "usage": True, "error": f"unknown op {op!r}"}

    def _last_failure(self, target: TargetSpec) -> str:
        """The reason (and detail) the applicator recorded for the channel's last result."""
        channel = self.applicator.status([target])["channels"].get(target.channel, {})
        last = channel.get("last") or {}
        reason = last.get("reason") or "unknown reason"
        detail = last.get("detail")
        return f"{reason} ({detail})" if detail else str(reason)

    async def _control_apply(self, target: TargetSpec) -> dict[str, Any]:
        st = self._chan(target.channel)
        ann = st.waiting or st.available or self.node.book.newest(target.channel)
        installed = self.applicator.installed_version(target)
        if ann is None:
            if installed is not None:  # nothing to do is not a mistake
                return {"ok": True, "message": f"{target.channel} is already at {installed}"}
            return {"ok": False, "usage": True, "error": f"no update known for {target.channel}"}
        reason = self._refusal(ann, target)
        if reason == Reason.NOT_NEWER and installed is not None:
            return {"ok": True, "message": f"{target.channel} is already at {installed}"}
        if reason is not None:
            return {"ok": False, "usage": True, "error": f"{ann.body.version}: {reason}"}
        if not self.swarm.store.has_complete(ann.body.package_id):
            # Apply this download when it is done; the target's auto_apply stays as it is.
            st.apply_when_done = ann.body.package_id
            if st.download is None or st.download.body.package_id != ann.body.package_id:
                if st.scope is not None:
                    st.scope.cancel()
                self._cancel_retry(st)  # asked for now: no need to wait out a back-off
                self._start_download(ann, target, True)
            return {"ok": True, "message": f"downloading {ann.body.version}; it will be applied"}
        ok = await self._apply(ann, target)
        if ok:
            return {"ok": True, "message": f"{target.channel} {ann.body.version} applied"}
        return {"ok": False, "error": f"applying {ann.body.version} failed (see status)"}

    def status(self) -> dict[str, Any]:
        applied = self.applicator.status(list(self.targets.values()))["channels"]
        channels: dict[str, Any] = {}
        names = set(self.channels) | set(self.targets) | set(applied)
        for ch in sorted(names):
            st = self.channels.get(ch, ChannelState())
            target = self.targets.get(ch)
            a = applied.get(ch, {})
            dl = None
            if st.download is not None:
                dl = {"version": st.download.body.version, "state": "downloading", **st.progress}
            newest = self.node.book.newest(ch)
            retry = None
            if st.retry is not None:
                r = st.retry
                retry = {
                    "version": r.ann.body.version,
                    "step": r.step,
                    "reason": r.reason,
                    "attempt": r.attempt,
                    "next_try": round(r.next_try, 3),
                    "wake_on": r.wake_on,
                }
            channels[ch] = {
                "installed": a.get("installed_version"),
                "target": str(target.path) if target else None,
                "newest": newest.body.version if newest else None,
                # When the newest announcement stops being valid (publish --renew).
                "expires": newest.body.expires if newest else None,
                "download": dl,
                "waiting": _waiting(st, self.options.auto_download),
                "quarantined": [q["version"] for q in a.get("quarantined", [])],
                "last_refusal": _relevant_refusal(st.last_refusal, a.get("installed_version")),
                # Details for `quarantine list` and `versions`: why and when, and the
                # versions kept to roll back to.
                "quarantine": a.get("quarantined", []),
                "backups": [
                    {"version": b.get("version"), "created": b.get("created")}
                    for b in a.get("backups", [])
                ],
                "last": a.get("last"),
                "retry": retry,
                "last_download": st.last_download,
            }
        self._refresh_cache_index()
        return {
            **self.node.status(),
            "channels": channels,
            "cache": {
                "size": self.cache.used,
                "capacity": self.cache.capacity,
                "entries": [
                    {
                        "package_id": e.package_id.hex(),
                        "size": e.size,
                        "pinned": sorted(self.cache.pins(e.package_id)),
                    }
                    for e in self.cache.entries()
                ],
                "over_capacity": self.cache.over_capacity_reason(),
            },
            "packages": self.swarm.status(),
            "self_update": self.self_update.status_line()
            if self.self_update is not None
            else self.self_update_off,
            "self_update_info": self.self_update.status()
            if self.self_update is not None
            else {"managed": False},
        }


def _relevant_refusal(
    refusal: dict[str, Any] | None, installed: str | None
) -> dict[str, Any] | None:
    """The last refusal, while it still says something: not once the target runs that
    version or a newer one (then the refusal is history, and `status` would mislead)."""
    if refusal is None or installed is None:
        return refusal
    version = refusal.get("version")
    if isinstance(version, str) and not is_newer(version, installed):
        return None
    return refusal


def _waiting(st: ChannelState, auto_download: bool) -> list[dict[str, str]]:
    """Updates waiting for `p2pupdate apply`: downloaded ones, and (auto_download off)
    announced ones; each package once."""
    held = [st.waiting] if auto_download else [st.waiting, st.available]
    out: dict[str, dict[str, str]] = {}
    for ann in held:
        if ann is not None:
            pid = ann.body.package_id.hex()
            out.setdefault(pid, {"version": ann.body.version, "package_id": pid})
    return list(out.values())
