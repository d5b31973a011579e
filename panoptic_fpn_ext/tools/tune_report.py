"""The tune tool's grid, and its text outputs: the sweep table, the best setting as YAML, the error
analysis table, and both as JSON (see :mod:`panoptic_fpn_ext.tools.tune`)."""

import itertools
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..evaluation.pq_errors import STEPS, ErrorAnalysis
from ..evaluation.pq import PQStatistics, pq_results
from ..evaluation.threshold_sweep import SETTING_KEYS, DatasetClasses, Setting

__all__ = ["SweepReport", "error_table", "error_json", "parse_grid", "parse_setting"]

# --grid names of the thresholds, in Setting's order (a config key's last part also works).
GRID_NAMES = ("confidence", "overlap", "stuff_area")
DEFAULT_STEPS = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_AREA_FACTORS = (0.25, 0.5, 1, 2, 4)
SUMMARY_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")


def _grid_index(name: str, item: str) -> int:
    """The Setting index of the threshold ``name`` (of the ``--grid`` item ``item``)."""
    name = name.lower()
    for index, (short, key) in enumerate(zip(GRID_NAMES, SETTING_KEYS)):
        if name in (short, key.lower(), key.rsplit(".", 1)[1].lower()):
            return index
    raise ValueError(f"--grid {item}: unknown threshold; expected one of {list(GRID_NAMES)}")


def _values(item: str, text: str) -> List[float]:
    """A comma-separated list, or START:STOP:COUNT (evenly spaced, both ends included)."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            return [float(v) for v in np.linspace(float(start), float(stop), int(count))]
        return [float(v) for v in text.split(",")]
    except ValueError as e:
        raise ValueError(
            f"--grid {item}: expected a comma-separated list of numbers or START:STOP:COUNT ({e})"
        ) from e


def _check_values(index: int, values: Sequence[float], source: str) -> List[float]:
    """The values of one threshold, checked and made exact: confidence and overlap in [0, 1];
    stuff areas whole numbers of pixels >= 1 (the config key is an integer; at 0 a stuff label
    with no free pixel would become a segment without pixels, which PQ evaluation rejects)."""
    if index < 2 and any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{source}: {GRID_NAMES[index]} values must be in [0, 1], got {values}")
    if index == 2:
        if any(not (math.isfinite(v) and v >= 1 and v == int(v)) for v in values):
            raise ValueError(
                f"{source}: stuff_area values must be whole numbers of pixels >= 1 (at 0 a stuff "
                f"label with no free pixel becomes a segment without pixels), got {values}"
            )
        values = [float(int(v)) for v in values]
    return sorted(set(values))


def parse_grid(items: Sequence[str], config_setting: Setting) -> List[Setting]:
    """The settings to sweep: the product of each threshold's values (``--grid KEY=VALUES``
    items; the default grid for thresholds not named), plus ``config_setting``.

    Raises:
        ValueError: a malformed item, an unknown threshold, a value out of range (naming it).
    """
    default_areas = [max(1.0, round(config_setting.stuff_area * f)) for f in DEFAULT_AREA_FACTORS]
    axes = [list(DEFAULT_STEPS), list(DEFAULT_STEPS), default_areas]
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--grid {item}: expected KEY=VALUES, e.g. overlap=0.3,0.5,0.7")
        index = _grid_index(name, item)
        axes[index] = _check_values(index, _values(item, text), f"--grid {item}")
    axes = [_check_values(i, values, "default grid") for i, values in enumerate(axes)]
    settings = [Setting(*values) for values in itertools.product(*axes)]
    return settings + ([config_setting] if config_setting not in settings else [])


def parse_setting(text: str) -> Optional[Setting]:
    """``--analyze``: None for "config" or "best" (resolved later), else CONFIDENCE,OVERLAP,AREA.

    Raises:
        ValueError: a malformed or out-of-range setting.
    """
    if text in ("config", "best"):
        return None
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ValueError(
            f"--analyze {text}: expected 'config', 'best' or CONFIDENCE,OVERLAP,STUFF_AREA"
        )
    return Setting(*(_check_values(i, [v], f"--analyze {text}")[0] for i, v in enumerate(values)))


def _setting_cells(setting: Setting) -> List[str]:
    return [f"{setting.confidence:.3g}", f"{setting.overlap:.3g}", f"{setting.stuff_area:.0f}"]


def _fixed_width(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


@dataclass
class SweepReport:
    """The sweep's statistics of each setting, and their results (the PQ evaluator's dict)."""

    dataset: str
    classes: DatasetClasses
    settings: List[Setting]
    statistics: List[PQStatistics]
    config_setting: Setting

    def __post_init__(self):
        isthing, names = self.classes.isthing, self.classes.names
        self.results = [pq_results(s, isthing, names) for s in self.statistics]

    @property
    def best(self) -> int:
        """Index of the highest PQ (the first in grid order among equals)."""
        return int(np.argmax([r["PQ"] for r in self.results]))

    @property
    def config(self) -> int:
        return self.settings.index(self.config_setting)

    def table(self, top: int) -> str:
        """The ``top`` settings by PQ, then the config's."""
        order = sorted(range(len(self.settings)), key=lambda k: (-self.results[k]["PQ"], k))
        config_pq = self.results[self.config]["PQ"]
        header = ["rank", *GRID_NAMES, *SUMMARY_KEYS, "PQ - config's"]
        rows = [header]
        for rank, k in enumerate(order[:top], start=1):
            rows.append(self._row(str(rank), k, config_pq))
        rows.append(self._row(f"config ({order.index(self.config) + 1})", self.config, config_pq))
        title = (
            f"{len(self.settings)} settings of MODEL.PANOPTIC_FPN.COMBINE on {self.dataset}: the "
            f"{min(top, len(order))} best by PQ, and the config's (its rank in parentheses)"
        )
        return title + "\n" + _fixed_width(rows)

    def _row(self, label: str, k: int, config_pq: float) -> List[str]:
        result = self.results[k]
        metrics = [f"{result[key]:.2f}" for key in SUMMARY_KEYS]
        gain = f"{result['PQ'] - config_pq:+.2f}"
        return [label, *_setting_cells(self.settings[k]), *metrics, gain]

    def best_yaml(self) -> str:
        """The best setting as a YAML snippet of config keys (merge it over the config)."""
        best = self.settings[self.best]
        pq, config_pq = self.results[self.best]["PQ"], self.results[self.config]["PQ"]
        return (
            f"# Best of {len(self.settings)} settings on {self.dataset} by PQ: {pq:.2f} (the "
            f"config's setting: {config_pq:.2f})\n"
            "MODEL:\n  PANOPTIC_FPN:\n    COMBINE:\n"
            f"      INSTANCES_CONFIDENCE_THRESH: {best.confidence!r}\n"
            f"      OVERLAP_THRESH: {best.overlap!r}\n"
            f"      STUFF_AREA_LIMIT: {int(best.stuff_area)}\n"
        )

    def to_json(self, extra: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config_setting": self.config_setting.config(),
            "best_setting": self.settings[self.best].config(),
            "classes": self.classes.names,
            "settings": [
                {"setting": s.config(), "panoptic_seg": r, "counts": _counts(t)}
                for s, r, t in zip(self.settings, self.results, self.statistics)
            ],
            **extra,
        }


def _counts(statistics: PQStatistics) -> Dict[str, List[int]]:
    return {key: getattr(statistics, key).tolist() for key in ("tp", "fp", "fn")}


def _signed(value: float) -> str:
    """``value`` to 2 decimals with its sign; float noise around 0 reads as +0.00."""
    return "-" if math.isnan(value) else f"{round(value, 2) + 0.0:+.2f}"


def error_table(analysis: ErrorAnalysis, dataset: str) -> str:
    """The error analysis as text: overall per step, then per class."""
    classes = analysis.classes
    results = analysis.stage_results()
    contributions = analysis.contributions()
    changes = analysis.count_changes()
    config = analysis.setting.config()
    setting = ", ".join(f"{key.rsplit('.', 1)[1]} {value:g}" for key, value in config.items())
    measured, after = results[0], results[-1]
    measured_stats = analysis.stages[0]
    tp, fp, fn = (int(x.sum()) for x in (measured_stats.tp, measured_stats.fp, measured_stats.fn))
    lines = [
        f"PQ lost to the combiner's decisions on {dataset} at {setting}",
        f"measured: PQ {measured['PQ']:.2f}, PQ_th {measured['PQ_th']:.2f}, "
        f"PQ_st {measured['PQ_st']:.2f} (TP {tp}, FP {fp}, FN {fn})",
        "",
    ]
    rows = [["step", "decisions changed", "TP", "FP", "FN", "PQ", "PQ_th", "PQ_st"]]
    for step_index, step in enumerate(STEPS):
        delta = changes[step].sum(axis=1)
        rows.append(
            [step, str(int(analysis.decisions[step_index].sum()))]
            + [f"{int(d):+d}" for d in delta]
            + [_signed(contributions[step][k]) for k in ("PQ", "PQ_th", "PQ_st")]
        )
    gap = {k: after[k] - measured[k] for k in ("PQ", "PQ_th", "PQ_st")}
    rows.append(["sum", "", "", "", ""] + [_signed(gap[k]) for k in ("PQ", "PQ_th", "PQ_st")])
    lines.append(_fixed_width(rows))
    lines += [
        "",
        f"after the four steps: PQ {after['PQ']:.2f}; left to 100 (the networks' errors): "
        f"{100 - after['PQ']:.2f}. Pixels given in step 'unlabelled': "
        f"{int(analysis.unlabelled_pixels.sum())}.",
        "",
    ]
    rows = [["class", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN", *STEPS]]
    for k, name in enumerate(classes.names):
        stats = measured_stats
        rows.append(
            [name, "thing" if classes.isthing[k] else "stuff"]
            + [_plain(measured[f"{m}_{name}"]) for m in ("PQ", "SQ", "RQ")]
            + [str(int(x[k])) for x in (stats.tp, stats.fp, stats.fn)]
            + [_signed(contributions[step][f"PQ_{name}"]) for step in STEPS]
        )
    lines.append("per class at the setting, and the PQ each step recovers:")
    lines.append(_fixed_width(rows))
    return "\n".join(lines)


def _plain(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def error_json(analysis: ErrorAnalysis, dataset: str) -> Dict[str, Any]:
    changes = analysis.count_changes()
    return {
        "dataset": dataset,
        "setting": analysis.setting.config(),
        "steps": list(STEPS),
        "stage_results": analysis.stage_results(),
        "contributions": analysis.contributions(),
        "per_class": {
            name: {
                "tp": int(analysis.stages[0].tp[k]),
                "fp": int(analysis.stages[0].fp[k]),
                "fn": int(analysis.stages[0].fn[k]),
                "decisions_changed": {
                    s: int(analysis.decisions[i, k]) for i, s in enumerate(STEPS)
                },
                "count_changes": {
                    s: dict(zip(("tp", "fp", "fn"), changes[s][:, k].tolist())) for s in STEPS
                },
            }
            for k, name in enumerate(analysis.classes.names)
        },
        "unlabelled_pixels_given": int(analysis.unlabelled_pixels.sum()),
        "confusion": {
            "classes": analysis.classes.names,
            "rows_ground_truth_columns_predicted": analysis.confusion.tolist(),
        },
    }
