"""PNG plots of a simulation result: cumulative reward and cumulative regret per policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot_paths(result_path: str | Path) -> dict[str, Path]:
    """Where :func:`write_plots` puts its PNGs: beside ``result_path`` (``X.json`` -> ``X.reward.png``,
    ``X.regret.png``)."""
    p = Path(result_path)
    stem = p.with_suffix("")
    return {"reward": stem.with_name(stem.name + ".reward.png"), "regret": stem.with_name(stem.name + ".regret.png")}


def write_plots(result: Mapping[str, Any], result_path: str | Path) -> dict[str, Path]:
    """Draw the ``series`` of every policy of a result document (``SimulationResult.to_json()``) with
    matplotlib's Agg backend; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = plot_paths(result_path)
    policies = result.get("policies", {})
    title = str(result.get("meta", {}).get("dataset", ""))
    for kind, key, ylabel in (("reward", "cumulative_reward", "cumulative clicks"),
                              ("regret", "cumulative_regret", "cumulative pseudo-regret (expected clicks)")):
        fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
        for spec, entry in policies.items():
            series = entry.get("series", {})
            baseline = spec.startswith("static:") or spec in ("all", "random")
            ax.plot(series.get("searches", []), series.get(key, []), label=spec,
                    linestyle="--" if baseline else "-", linewidth=1.0 if baseline else 2.0)
        ax.set_xlabel("searches")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {ylabel} per policy" if title else f"{ylabel} per policy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(paths[kind])
        plt.close(fig)
    return paths
