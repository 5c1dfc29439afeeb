"""timeline.png: every node's download progress over time, with announce and apply marks.

Drawn from report.json's per-node event streams with matplotlib's Agg backend
(no display needed). One line per node (progress 0..1 against seconds since
the first publication); a triangle where it received an announcement, a dot where it
applied an update, a cross where it rolled one back, an x where the harness
killed it, and a dashed vertical line at each publication. Returns None
(and draws nothing) when matplotlib is not installed: the report stands alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_timeline"]


def _points(events: list[dict[str, Any]], t0: float) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for ev in events:
        name = ev.get("event")
        t = ev.get("t")
        if not isinstance(t, (int, float)):
            continue
        if name == "download_started":
            y = 0.0
        elif name == "download_progress" and isinstance(ev.get("progress"), (int, float)):
            y = float(ev["progress"])
        elif name == "download_complete":
            y = 1.0
        else:
            continue
        xs.append(t - t0)
        ys.append(y)
    return xs, ys


def plot_timeline(report: dict[str, Any], started: float, path: Path) -> Path | None:
    """Draw the timeline of ``report`` to ``path``; None if matplotlib is missing.

    ``started`` is the run's start (unix seconds); the time axis counts from the
    first publication (setup shows as negative time) when there was one.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    nodes = report["nodes"]
    pubs = report["publications"]
    offset = pubs[0]["published_at"] if pubs and pubs[0].get("published_at") is not None else 0.0
    t0 = started + offset
    fig, ax = plt.subplots(figsize=(11, 6), dpi=100)
    try:
        cmap = plt.get_cmap("tab20")
        for i, node in enumerate(nodes):
            color = cmap(i % 20)
            xs, ys = _points(node["events"], t0)
            if xs:
                ax.plot(
                    xs, ys, color=color, linewidth=1.4, label=node["name"], drawstyle="steps-post"
                )
            marks = {
                "announcement_received": ("^", 0.0),
                "update_complete": ("o", 1.0),
                "rolled_back": ("P", 1.0),
                "rollout_aborted": ("X", 0.5),
            }
            for ev in node["events"]:
                spec = marks.get(str(ev.get("event")))
                t = ev.get("t")
                if spec is not None and isinstance(t, (int, float)):
                    ax.plot([t - t0], [spec[1]], marker=spec[0], color=color, markersize=7,
                            markeredgecolor="black", linestyle="none")  # fmt: skip
        for f in report["faults"]:
            if f.get("kind") == "kill9" and f.get("fired_at") is not None:
                ax.plot([f["fired_at"] - t0], [f.get("progress_at_kill") or 0.0], marker="x",
                        color="black", markersize=10, linestyle="none")  # fmt: skip
        for p in report["publications"]:
            if p.get("published_at") is not None:
                x = p["published_at"] - offset
                ax.axvline(x, color="grey", linestyle="--", linewidth=1)
                ax.annotate(f"publish {p['version']}", (x, 1.04),
                            fontsize=8, color="grey", annotation_clip=False)  # fmt: skip
                # A staged rollout: a dotted line where each later stage opens.
                for pct, start in p.get("stages") or []:
                    if start:
                        ax.axvline(x + start, color="tab:blue", linestyle=":", linewidth=1)
                        ax.annotate(f"stage {pct}%", (x + start, 1.0), fontsize=8,
                                    color="tab:blue", annotation_clip=False)  # fmt: skip
        sc = report["scenario"]
        ax.set_title(
            f"{sc['name']}: {sc['nodes']} nodes, {sc['package_size'] / 2**20:.1f} MiB "
            "(^ announced, o applied, P rolled back, X saw the abort, x killed)",
            fontsize=10,
        )
        ax.set_xlabel("seconds since the first publication" if pubs else "seconds")
        ax.set_ylabel("download progress")
        ax.set_ylim(-0.05, 1.1)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=7, ncol=max(1, len(nodes) // 10))
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
