"""Print evaluation results of two runs side by side (e.g. untrained vs trained).

    python -m panoptic_fpn_ext.tools.summary BEFORE/eval_results.json AFTER/eval_results.json

Reads the ``eval_results.json`` files that ``train_net.py`` writes. Exits with status 1 when the
second run's PQ is not higher than the first's, so a job whose model did not learn fails loudly.
"""

import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

# (row label, task key in the results, metric key)
ROWS: List[Tuple[str, str, str]] = [
    ("PQ", "panoptic_seg", "PQ"),
    ("SQ", "panoptic_seg", "SQ"),
    ("RQ", "panoptic_seg", "RQ"),
    ("PQ things", "panoptic_seg", "PQ_th"),
    ("PQ stuff", "panoptic_seg", "PQ_st"),
    ("mask AP", "segm", "AP"),
    ("box AP", "bbox", "AP"),
    ("mIoU", "sem_seg", "mIoU"),
]


def load_results(path: str) -> Dict[str, Dict[str, float]]:
    """The results dict of ``path`` ({task: {metric: value}}); errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"Cannot read evaluation results {path}: {e}")


def _value(results: Dict[str, Dict[str, float]], task: str, metric: str) -> Optional[float]:
    return results.get(task, {}).get(metric)


def format_table(before: Dict, after: Dict, names: Tuple[str, str]) -> str:
    """A fixed-width text table with one row per metric present in either result."""
    lines = [f"{'metric':<10} {names[0]:>10} {names[1]:>10}"]
    for label, task, metric in ROWS:
        a, b = _value(before, task, metric), _value(after, task, metric)
        if a is None and b is None:
            continue
        cells = ["-" if v is None else f"{v:.1f}" for v in (a, b)]
        lines.append(f"{label:<10} {cells[0]:>10} {cells[1]:>10}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="eval_results.json of the baseline run")
    parser.add_argument("after", help="eval_results.json of the run to compare")
    parser.add_argument("--names", nargs=2, default=("untrained", "trained"))
    args = parser.parse_args(argv)
    before, after = load_results(args.before), load_results(args.after)
    print(format_table(before, after, tuple(args.names)))
    pq_before, pq_after = _value(before, "panoptic_seg", "PQ"), _value(after, "panoptic_seg", "PQ")
    if pq_before is None or pq_after is None:
        print(f"No panoptic_seg/PQ in {args.before if pq_before is None else args.after}")
        return 1
    if pq_after <= pq_before:
        print(f"FAILED: PQ did not improve ({pq_before:.1f} -> {pq_after:.1f})")
        return 1
    print(f"PQ {pq_before:.1f} ({args.names[0]}) -> {pq_after:.1f} ({args.names[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
