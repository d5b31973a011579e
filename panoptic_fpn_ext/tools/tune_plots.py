"""The tune tool's plots (matplotlib, PNG): PQ against each threshold, per-class PQ at the config's
setting and the best, the PQ recovered by each step of the error analysis, and the confusion of
matched segments. Figures are drawn without pyplot (no global state) and written atomically."""

import io
from typing import Dict, List, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..evaluation.pq_errors import STEPS, ErrorAnalysis
from ..evaluation.threshold_sweep import Setting
from ..file_io import atomic_write
from .tune_report import GRID_NAMES, SweepReport

__all__ = ["plot_confusion", "plot_errors", "plot_per_class", "plot_thresholds"]

CURVES = (("PQ", "tab:blue"), ("PQ_th", "tab:orange"), ("PQ_st", "tab:green"))
AXIS_LABELS = (
    "instance confidence threshold\n(INSTANCES_CONFIDENCE_THRESH)",
    "overlap threshold\n(OVERLAP_THRESH)",
    "stuff area limit, pixels\n(STUFF_AREA_LIMIT)",
)
STEP_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def _save(figure: Figure, path: str) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _slice(report: SweepReport, axis: int) -> List[int]:
    """Indices of the settings that differ from the best one only on threshold ``axis``,
    ordered by that threshold."""
    best = report.settings[report.best]
    keep = [
        k
        for k, s in enumerate(report.settings)
        if all(s[i] == best[i] for i in range(3) if i != axis)
    ]
    return sorted(keep, key=lambda k: report.settings[k][axis])


def plot_thresholds(report: SweepReport, path: str) -> None:
    """PQ, PQ_th and PQ_st (rows) against each threshold (columns), the other two thresholds at
    the best setting's values; the best marked (*), the config's value dashed."""
    figure = Figure(figsize=(12, 8.5))
    best, config = report.settings[report.best], report.config_setting
    axes = figure.subplots(3, 3, sharey="row", squeeze=False)
    for column in range(3):
        indices = _slice(report, column)
        x = [report.settings[k][column] for k in indices]
        for row, (key, color) in enumerate(CURVES):
            ax = axes[row][column]
            ax.plot(x, [report.results[k][key] for k in indices], "o-", color=color)
            ax.plot([best[column]], [report.results[report.best][key]], "*", color="black", ms=12)
            ax.axvline(config[column], color="grey", linestyle="--", linewidth=1)
            if column == 2 and min(x) > 0 and max(x) / min(x) > 8:
                ax.set_xscale("log")
                ax.minorticks_off()
            if len(x) <= 12:
                ax.set_xticks(x)
                ax.set_xticklabels([f"{v:g}" for v in x])
            ax.grid(alpha=0.3)
            if column == 0:
                ax.set_ylabel(f"{key}, percent")
        others = [f"{GRID_NAMES[i]} {best[i]:g}" for i in range(3) if i != column]
        axes[0][column].set_title(", ".join(others), fontsize=9)
        axes[2][column].set_xlabel(AXIS_LABELS[column])
    for row in axes:
        _readable_range(row[0])
    figure.suptitle(
        f"{report.dataset}: PQ against each threshold, the other two at the best setting (*); "
        "dashed: the config's value",
        fontsize=10,
    )
    _save(figure, path)


def _readable_range(ax, least: float = 0.2) -> None:
    """Plain tick labels (no offset), and a y range of at least ``least`` points, so that
    differences in float rounding do not look like changes."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    low, high = ax.get_ylim()
    if high - low < least:
        middle = (low + high) / 2
        ax.set_ylim(middle - least / 2, middle + least / 2)


def _per_class_bars(ax, names: Sequence[str], series: Dict[str, Sequence[float]], colors) -> None:
    y = np.arange(len(names))
    height = 0.8 / len(series)
    for k, ((label, values), color) in enumerate(zip(series.items(), colors)):
        ax.barh(y + (k - (len(series) - 1) / 2) * height, values, height, label=label, color=color)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def plot_per_class(report: SweepReport, path: str) -> None:
    """Per-class PQ at the config's setting and at the best (left), and their difference."""
    classes = report.classes
    config, best = report.results[report.config], report.results[report.best]
    series = {
        f"config {_describe(report.settings[report.config])}": [
            config[f"PQ_{c}"] for c in classes.names
        ],
        f"best {_describe(report.settings[report.best])}": [
            best[f"PQ_{c}"] for c in classes.names
        ],
    }
    names = [f"{c} ({'thing' if t else 'stuff'})" for c, t in zip(classes.names, classes.isthing)]
    figure = Figure(figsize=(11, 0.45 * len(names) + 1.8))
    left, right = figure.subplots(1, 2, sharey=True)
    _per_class_bars(left, names, series, ("tab:grey", "tab:blue"))
    values = np.concatenate([v for v in series.values()])
    low = np.nanmin(values) if np.isfinite(values).any() else 0.0
    left.set_xlim(max(0.0, low - 0.1 * (100 - low) - 1), 100)
    left.set_xlabel("PQ, percent")
    left.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    gains = [best[f"PQ_{c}"] - config[f"PQ_{c}"] for c in classes.names]
    right.barh(np.arange(len(names)), gains, color="tab:blue")
    right.axvline(0, color="black", linewidth=0.8)
    right.grid(axis="x", alpha=0.3)
    right.set_xlabel("PQ at the best - at the config's setting, points")
    figure.suptitle(
        f"{report.dataset}: per-class PQ, the config's setting and the best (confidence / "
        "overlap / stuff area)",
        fontsize=10,
    )
    _save(figure, path)


def _describe(setting: Setting) -> str:
    return f"({setting.confidence:g} / {setting.overlap:g} / {setting.stuff_area:g})"


def plot_errors(analysis: ErrorAnalysis, dataset: str, path: str) -> None:
    """Left: PQ from the measured value through each step (a waterfall); right: the PQ each step
    recovers per class."""
    results = analysis.stage_results()
    contributions = analysis.contributions()
    figure = Figure(figsize=(13, 0.4 * len(analysis.classes.names) + 3))
    ax = figure.add_subplot(1, 2, 1)
    level = results[0]["PQ"]
    ax.bar(0, level, color="tab:grey")
    for k, step in enumerate(STEPS, start=1):
        delta = contributions[step]["PQ"]
        ax.bar(k, delta, bottom=level, color=STEP_COLORS[k - 1])
        ax.text(k, max(level, level + delta), f"{delta:+.2f}", ha="center", va="bottom", fontsize=8)
        level += delta
    ax.bar(len(STEPS) + 1, level, color="tab:grey", alpha=0.6)
    ax.set_xticks(range(len(STEPS) + 2))
    ax.set_xticklabels(["measured", *STEPS, "after"], rotation=20)
    low = min(r["PQ"] for r in results)
    ax.set_ylim(max(0.0, low - 2 * (results[-1]["PQ"] - low) - 1), min(100.0, level + 1))
    ax.set_ylabel("PQ, percent")
    ax.set_title("PQ recovered by deciding each rule right for matched segments", fontsize=9)
    ax = figure.add_subplot(1, 2, 2)
    names = analysis.classes.names
    series = {step: [contributions[step][f"PQ_{c}"] for c in names] for step in STEPS}
    _per_class_bars(ax, names, series, STEP_COLORS)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("PQ recovered, percent points")
    ax.legend(fontsize=8, loc="lower right")
    setting = _describe(analysis.setting)
    figure.suptitle(
        f"{dataset}: PQ lost to the combiner's decisions at {setting} "
        "(confidence / overlap / stuff area)",
        fontsize=10,
    )
    _save(figure, path)


def plot_confusion(analysis: ErrorAnalysis, dataset: str, path: str) -> None:
    """Counts of (GT class, predicted class) for segments matched by IoU > 0.5."""
    names = analysis.classes.names
    counts = analysis.confusion
    size = 0.55 * len(names) + 2.5
    figure = Figure(figsize=(size + 1, size))
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(np.log1p(counts), cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        if value:
            dark = np.log1p(value) > 0.6 * np.log1p(counts.max())
            color = "white" if dark else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    figure.colorbar(image, ax=ax, label="log(1 + segments)")
    setting = _describe(analysis.setting)
    ax.set_title(f"{dataset}\nsegments matched by IoU > 0.5, at {setting}", fontsize=9)
    _save(figure, path)
