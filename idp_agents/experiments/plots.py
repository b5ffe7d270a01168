"""The sweep report's figures: success vs K, training curves, step time vs K, generalisation to larger mazes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from idp_agents.experiments.sweeps import Sweep


def planner_style(planner: str) -> dict:
    """One colour per Bellman step; implicit solid, unrolled dashed."""
    base = planner.removeprefix("id-")
    colours = {"vin": "tab:blue", "convgppn": "tab:orange", "symvin": "tab:green"}
    return {"color": colours.get(base, "tab:gray"), "linestyle": "-" if planner.startswith("id-") else "--"}


def _figure(rows: int, cols: int, width: float = 4.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return plt, fig, axes


def _legend(ax, fontsize: int) -> None:
    """The planners' legend, saying which lines are which; none when nothing was plotted (an empty sweep)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, title="solid: implicit (id-)\ndashed: unrolled", title_fontsize=fontsize)


def plot_success_vs_k(sweep: Sweep, records: list[dict], path: Path) -> None:
    """Test success vs K, one panel per task; mean ± std over seeds; an x at 0 marks a K that ran out of memory."""
    plt, fig, axes = _figure(1, len(sweep.tasks))
    for ax, task in zip(axes[0], sweep.tasks, strict=True):
        for planner in sweep.planners:
            style = planner_style(planner)
            ks, means, stds, oom = [], [], [], []
            for k in sweep.k:
                runs = [r for r in records if (r["task"], r["planner"], r["k"]) == (task["name"], planner, k)]
                finished = [r["success"] for r in runs if r["status"] == "done"]
                if finished:
                    ks.append(k)
                    means.append(100 * np.mean(finished))
                    stds.append(100 * np.std(finished))
                elif any(r["status"] == "out of memory" for r in runs):
                    oom.append(k)
            if ks:
                ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=planner, **style)
            if oom:
                ax.plot(oom, [0] * len(oom), "x", markersize=9, color=style["color"])
        ax.set(title=task["name"], xlabel="K", ylabel="test %Success", ylim=(-3, 103), xticks=sweep.k)
        ax.grid(alpha=0.3)
    _legend(axes[0][0], 8)
    fig.suptitle("Success vs K (implicit solid, unrolled dashed; x = out of memory)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_curves(sweep: Sweep, records: list[dict], path: Path) -> None:
    """Validation success per epoch, mean over seeds; one panel per task and K."""
    plt, fig, axes = _figure(len(sweep.tasks), len(sweep.k), 3.6, 2.8)
    for row, task in zip(axes, sweep.tasks, strict=True):
        for ax, k in zip(row, sweep.k, strict=True):
            for planner in sweep.planners:
                curves = [
                    [float(h["val_success"]) for h in r["history"]]
                    for r in records
                    if (r["task"], r["planner"], r["k"]) == (task["name"], planner, k) and r["history"]
                ]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                mean = 100 * np.mean([c[:length] for c in curves], axis=0)
                ax.plot(range(1, length + 1), mean, marker=".", label=planner, **planner_style(planner))
            ax.set(title=f"{task['name']}, K={k}", xlabel="epoch", ylabel="val %Success", ylim=(-3, 103))
            ax.grid(alpha=0.3)
    _legend(axes[0][0], 7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_step_times(sweep: Sweep, rows: list[dict], path: Path) -> None:
    plt, fig, axes = _figure(2, len(sweep.tasks))
    for col, task in enumerate(sweep.tasks):
        for row, what in enumerate(("forward_ms", "backward_ms")):
            ax = axes[row][col]
            for planner in sweep.planners:
                points = sorted(
                    (int(r["k"]), float(r[what])) for r in rows if (r["task"], r["planner"]) == (task["name"], planner)
                )
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=planner, **planner_style(planner))
            ax.set(title=f"{task['name']}: {what.split('_')[0]}", xlabel="K", ylabel="ms per batch", xticks=sweep.k)
            ax.grid(alpha=0.3)
    _legend(axes[0][0], 8)
    device = rows[0]["device"] if rows else "?"
    fig.suptitle(f"Forward and backward time of one training step vs K ({device})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generalisation(sweep: Sweep, rows: list[dict], path: Path) -> None:
    plt, fig, axes = _figure(1, len(sweep.k))
    for ax, k in zip(axes[0], sweep.k, strict=True):
        for planner in sweep.planners:
            points = []
            for size in sweep.generalisation["sizes"]:
                values = [
                    float(r["success"])
                    for r in rows
                    if (r["planner"], r["k"], r["size"]) == (planner, str(k), str(size))
                ]
                if values:
                    points.append((size, 100 * np.mean(values), 100 * np.std(values)))
            if points:
                sizes, means, stds = zip(*points, strict=True)
                ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=planner, **planner_style(planner))
        ax.set(title=f"trained on {sweep.generalisation['task']}, K={k}", xlabel="test map size", ylabel="%Success")
        ax.set(ylim=(-3, 103), xticks=sweep.generalisation["sizes"])
        ax.grid(alpha=0.3)
    _legend(axes[0][0], 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
