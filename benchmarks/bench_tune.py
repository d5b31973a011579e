"""The tune tool's threshold sweep against separate ``train_net.py --eval-only`` runs.

    python benchmarks/bench_tune.py [--weights output/quick_start/model_final.pth]
                                    [--eval-runs 3] [--device cpu|cuda]

On the synthetic validation set ``panoptic_fpn_ext_shapes_val`` (100 images of 128x128) with the
quick-start model that ``make demo`` trains (``--weights``):

* the tool's network pass (model over every image into a fresh cache), then its sweep of the
  default 5 x 5 x 5 grid (125 settings: confidence and overlap 0.3-0.7, stuff area 16-256 px)
  and of the config's setting alone, both from that cache, with one worker per usable core. The
  cost of one more setting is (sweep of 125 - sweep of 1) / 124, compared with the network pass;
* ``--eval-runs`` separate ``train_net.py --eval-only`` processes (the config's setting and
  settings of the grid, PQ evaluator only: box/mask AP and mIoU switched off, which makes each
  run cheaper than the default), timed as a user runs them (wall clock, process start
  included). 125 such runs are estimated as 125 x their mean time (measured a few, scaled).
  Each run's PQ results must equal the sweep's at its setting to 1e-9, or the benchmark fails.

Writes the ``tune-{device}`` block of BENCHMARKS.md.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from common import command_line, machine_description, update_benchmarks_md
from detectron2.data import get_detection_dataset_dicts

from panoptic_fpn_ext.data.synthetic import SHAPES_IMAGE_SIZE, SHAPES_SPLIT_SIZES
from panoptic_fpn_ext.evaluation.combiner_cache import CombinerCache
from panoptic_fpn_ext.evaluation.panoptic_evaluator import usable_cores
from panoptic_fpn_ext.evaluation.pq import pq_results
from panoptic_fpn_ext.evaluation.threshold_sweep import DatasetClasses, Setting, sweep
from panoptic_fpn_ext.tools import tune
from panoptic_fpn_ext.tools.predict import build_cfg
from panoptic_fpn_ext.tools.tune_report import parse_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_START_CONFIG = os.path.join(ROOT, "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml")
DEFAULT_WEIGHTS = "output/quick_start/model_final.pth"
DATASET = "panoptic_fpn_ext_shapes_val"
PQ_ONLY = ["PANOPTIC_FPN_EXT.EVAL.INSTANCE_AP", "False"]
PQ_ONLY += ["PANOPTIC_FPN_EXT.EVAL.SEMANTIC_MIOU", "False"]


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def eval_only_run(weights: str, device: str, setting: Setting, output: str) -> tuple:
    """One ``train_net.py --eval-only`` process at ``setting``: (its PQ results, seconds)."""
    overrides = [x for key, value in setting.config().items() for x in (key, repr(value))]
    overrides[-1] = str(int(setting.stuff_area))  # STUFF_AREA_LIMIT is an integer key
    command = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file"]
    weights = os.path.abspath(weights)  # the process runs in the repository root
    command += [QUICK_START_CONFIG, "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.DEVICE"]
    command += [device, "OUTPUT_DIR", output, *PQ_ONLY, *overrides]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"train_net.py --eval-only failed:\n{result.stderr[-3000:]}")
    stem = os.path.splitext(os.path.basename(weights))[0]
    with open(os.path.join(output, f"eval_{stem}", "eval_results.json")) as f:
        return json.load(f)["panoptic_seg"], seconds


def largest_difference(a: Dict[str, float], b: Dict[str, float]) -> float:
    """The largest |a - b| over the keys (NaN equal to NaN); inf when the keys differ."""
    if set(a) != set(b):
        return math.inf
    return max(0.0 if math.isnan(a[k]) and math.isnan(b[k]) else abs(a[k] - b[k]) for k in a)


def measure(args: argparse.Namespace, folder: str) -> Dict:
    opts = ["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", args.device]
    cfg = build_cfg(QUICK_START_CONFIG, opts)
    records = get_detection_dataset_dicts([DATASET], filter_empty=False)
    cache = CombinerCache(
        os.path.join(folder, "cache"), tune.cache_fingerprint(cfg, args.weights, records)
    )
    _, network_seconds = timed(tune.run_network, cfg, records, cache)
    tasks = tune.shard_tasks(cache, records)
    classes = DatasetClasses.of(DATASET)
    config_setting = Setting.from_config(cfg)
    grid = parse_grid([], config_setting)
    workers = usable_cores()
    _, one_seconds = timed(sweep, tasks, [config_setting], classes, args.device, workers)
    totals, grid_seconds = timed(sweep, tasks, grid, classes, args.device, workers)
    results = {s: pq_results(t, classes.isthing, classes.names) for s, t in zip(grid, totals)}
    best = max(grid, key=lambda s: results[s]["PQ"])
    checked: List[Setting] = [config_setting, best, grid[0], grid[-1], grid[len(grid) // 2]]
    runs = []
    for k, setting in enumerate(checked[: args.eval_runs]):
        pq, seconds = eval_only_run(args.weights, args.device, setting, f"{folder}/eval{k}")
        difference = largest_difference(pq, results[setting])
        if difference > 1e-9:
            raise SystemExit(f"--eval-only at {setting} differs from the sweep by {difference}")
        runs.append({"setting": setting, "seconds": seconds, "difference": difference})
    return {
        "grid": grid,
        "network_seconds": network_seconds,
        "one_seconds": one_seconds,
        "grid_seconds": grid_seconds,
        "workers": workers,
        "bytes_per_image": cache.bytes_per_image(),
        "runs": runs,
        "config": results[config_setting]["PQ"],
        "best": (best, results[best]["PQ"]),
    }


def report(args: argparse.Namespace, m: Dict) -> None:
    """Print the result and write the ``tune-{device}`` block of BENCHMARKS.md."""
    count = len(m["grid"])
    per_setting = (m["grid_seconds"] - m["one_seconds"]) / (count - 1)
    ratio = per_setting / m["network_seconds"]
    eval_mean = sum(r["seconds"] for r in m["runs"]) / len(m["runs"])
    tool = m["network_seconds"] + m["grid_seconds"]
    speedup = count * eval_mean / tool
    memory, disk = m["bytes_per_image"]
    runs = "; ".join(
        f"({r['setting'].confidence:g}, {r['setting'].overlap:g}, {r['setting'].stuff_area:g}): "
        f"{r['seconds']:.1f} s, largest difference {r['difference']:.1e}"
        for r in m["runs"]
    )
    best, best_pq = m["best"]
    height, width = SHAPES_IMAGE_SIZE
    summary = (
        f"one more setting costs {ratio:.4f}x the network pass; the sweep of {count} settings "
        f"(network pass included) is {speedup:.1f}x faster than {count} --eval-only runs"
    )
    print(summary, flush=True)
    update_benchmarks_md(
        f"tune-{args.device}",
        f"## Threshold sweep (`tools.tune`) vs separate `--eval-only` runs, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; the quick-start model "
        f"(`{args.weights}`) on `{DATASET}` ({SHAPES_SPLIT_SIZES['val']} images of "
        f"{height}x{width}).\n\n"
        "| step | seconds |\n|---|---|\n"
        f"| network pass into the cache (once) | {m['network_seconds']:.2f} |\n"
        f"| sweep of the config's setting alone, from the cache | {m['one_seconds']:.2f} |\n"
        f"| sweep of the 5x5x5 grid ({count} settings), from the cache | "
        f"{m['grid_seconds']:.2f} |\n"
        f"| one more setting: (grid - one) / {count - 1} | {per_setting:.4f} "
        f"(**{ratio:.4f}x** the network pass; target <= 0.1x) |\n"
        f"| one `train_net.py --eval-only` run (mean of {len(m['runs'])} measured) | "
        f"{eval_mean:.2f} |\n"
        f"| {count} `--eval-only` runs, estimated as {count} x that mean (not all run) | "
        f"{count * eval_mean:.1f} |\n"
        f"| the tool: network pass + sweep of {count} | {tool:.2f} "
        f"(**{speedup:.1f}x** faster) |\n\n"
        f"Sweep workers: {m['workers']} processes. Cache: {memory / 1024:.1f} KiB per image as "
        f"arrays in memory (masks cropped to their boxes and bit-packed, semantic labels uint8), "
        f"{disk / 1024:.2f} KiB per image on disk (compressed). The `--eval-only` runs (PQ "
        f"evaluator only, box/mask AP and mIoU off) at (confidence, overlap, stuff area) "
        f"{runs}: each equal to the sweep's result at its setting (all PQ/SQ/RQ keys, per class "
        f"included; the benchmark fails above 1e-9). Config's setting: PQ {m['config']:.2f}; "
        f"best of the grid ({best.confidence:g}, {best.overlap:g}, {best.stuff_area:g}): PQ "
        f"{best_pq:.2f}.\n\n{summary}.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--eval-runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if not os.path.isfile(args.weights):
        raise SystemExit(
            f"--weights {args.weights}: no such file. Train the quick-start model first (`make "
            f"demo` writes {DEFAULT_WEIGHTS}), or pass the path of a trained quick-start "
            "checkpoint."
        )
    with tempfile.TemporaryDirectory() as folder:
        report(args, measure(args, folder))


if __name__ == "__main__":
    main()
