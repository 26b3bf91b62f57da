"""The plots of the search and ablation reports (matplotlib, drawn off-screen).

Every plot has a title, labelled axes and, where it shows more than one series, a legend that names each one.
A log axis gets plain tick labels (``0.01 0.02 0.05 0.1``) at 1-2-5, 1-3 or whole decades, whichever keeps them
few, and none at its minor ticks (matplotlib labels the minor ticks of an axis spanning less than a decade, and
they overlap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (trial number, its values in words, its status, epochs, metric per epoch)
Curve = tuple[str, str, str, Sequence[float], Sequence[float]]
#: (x, y, trial number, status)
Point = tuple[float, float, str, str]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_ticks(low: float, high: float) -> tuple[float, ...]:
    """The mantissas to label on a log axis from ``low`` to ``high``: 1-2-5 within about a decade, 1-3 within
    three, else whole decades only."""
    span = math.log10(high / low) if low > 0 and high > low else 0.0
    return (1.0, 2.0, 5.0) if span <= 1.5 else (1.0, 3.0) if span <= 3 else (1.0,)


def readable_log_axis(axis: Any, low: float, high: float) -> None:
    """Label a log ``axis`` (an x or y axis of matplotlib) at :func:`log_ticks`, in plain numbers, minor ticks
    unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=log_ticks(low, high)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_if_spread(ax: Any, values: Sequence[float]) -> bool:
    """A log y axis (readable, :func:`readable_log_axis`) when the positive ``values`` span more than 50x, as a
    loss that blew up in one trial does; whether it did."""
    values = [v for v in values if v == v]  # not NaN
    spread = bool(values) and min(values) > 0 and max(values) / min(values) > 50
    if spread:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis, min(values), max(values))
    return spread


def metric_against(points: Sequence[Point], key: str, ylabel: str, path: Path, *, title: str, log: bool,
                   bounds: tuple[float, float] | None = None, ticks: Sequence[float] | None = None) -> None:
    """A scatter of each trial's metric against its value of ``key`` (log x for a loguniform key) over the
    searched range ``bounds`` (ticks at a ``choice``'s values), each point marked with its trial number (trials
    at the same point share one label), trials stopped early apart from the completed ones."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = {"completed": ("o", "tab:blue"), "stopped early": ("v", "tab:orange")}
    for label, (marker, color) in groups.items():
        mine = [p for p in points if (p[3] == "completed") == (label == "completed")]
        if mine:
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], marker=marker, color=color, label=label, zorder=3)
    at: dict[tuple[float, float], list[str]] = {}
    for x, y, number, _ in points:
        at.setdefault((x, y), []).append(number)
    for (x, y), numbers in at.items():  # right of the point, level with it: close points rarely share a height
        ax.annotate(", ".join(numbers), (x, y), textcoords="offset points", xytext=(6, 0), va="center", fontsize=8)
    _log_if_spread(ax, [p[1] for p in points])
    xs = [p[0] for p in points]
    low, high = bounds if bounds and bounds[0] < bounds[1] else (min(xs), max(xs))
    if log:
        ax.set_xscale("log")
        if high > low:
            margin = (high / low) ** 0.04
            ax.set_xlim(low / margin, high * margin)
        readable_log_axis(ax.xaxis, low, high)
    else:
        if high > low:
            ax.set_xlim(low - 0.04 * (high - low), high + 0.04 * (high - low))
        if ticks:
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
        elif all(float(x).is_integer() for x in (*xs, low, high)):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(key + (", log scale" if log else "") + (", over the searched range" if bounds else ""))
    ax.set_ylabel(ylabel + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="status (labels: trial numbers)", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_curves(curves: Sequence[Curve], metric: str, path: Path, *, title: str) -> list[str]:
    """The metric of each trial per epoch, one line per trial; the legend (below the plot) names each trial, its
    values and, unless it completed, its status. A trial stopped early ends in a cross. Values that span more than
    50x (a loss that blew up) get a log axis (:func:`_log_if_spread`). Returns the legend's labels."""
    plt = _pyplot()
    rows = max(1, len(curves))
    fig, ax = plt.subplots(figsize=(8, 4 + 0.22 * rows))
    labels = []
    for number, values, status, epochs, series in curves:
        label = f"trial {number}: {values}" + (f" ({status})" if status and status != "completed" else "")
        labels.append(label)
        (line,) = ax.plot(epochs, series, marker="o", markersize=3, alpha=0.8, label=label)
        if status.startswith("stopped") and len(epochs):
            ax.plot([epochs[-1]], [series[-1]], marker="x", markersize=9, color=line.get_color())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    spread = _log_if_spread(ax, [v for *_, series in curves for v in series])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric + (", log scale" if spread else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        fig.legend(loc="lower left", bbox_to_anchor=(0.01, 0.0), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.22 * rows / (4 + 0.22 * rows) + 0.02, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return labels


def bar_chart(rows: Sequence[dict[str, Any]], metric: str, path: Path, *, title: str) -> None:
    """An ablation's rungs as bars: the mean of ``metric`` over the seeds with one standard deviation as error
    bars, each bar labelled with its mean and its run count; the rungs that did not run are named below."""
    plt = _pyplot()
    shown = [r for r in rows if r["mean"] is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 2), 4.5))
    bars = ax.bar(range(len(shown)), [r["mean"] for r in shown], yerr=[r["std"] or 0.0 for r in shown], capsize=4,
                  color="tab:blue", alpha=0.8)
    for bar, r in zip(bars, shown, strict=True):
        top = (bar.get_x() + bar.get_width() / 2, r["mean"] + (r["std"] or 0.0))
        ax.annotate(f"{r['mean']:.2f} (n={r['runs']})", top, textcoords="offset points", xytext=(0, 3), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(shown)), [r["rung"] for r in shown], rotation=30, ha="right")
    low = min(r["mean"] - (r["std"] or 0.0) for r in shown) if shown else 0.0
    high = max(r["mean"] + (r["std"] or 0.0) for r in shown) if shown else 1.0
    pad = 0.15 * (high - low) + 0.5
    ax.set_ylim(max(0.0, low - pad), high + pad)
    ax.set_ylabel(f"{metric}: mean over the seeds, ± 1 std")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    skipped = [f"{r['rung']} ({r['skipped']})" for r in rows if r["mean"] is None]
    if skipped:
        fig.text(0.01, 0.01, "not run: " + "; ".join(skipped), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if skipped else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
