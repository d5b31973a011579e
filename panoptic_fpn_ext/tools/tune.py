"""Tune the panoptic heuristic's thresholds on a dataset, and see where PQ is lost.

    python -m panoptic_fpn_ext.tools.tune --config-file CONFIG [--dataset NAME] [--output DIR]
        [--grid KEY=VALUES ...] [--analyze config|best|C,O,A] [--workers N] [--cache DIR]
        [--rebuild-cache] [--top K] [--import MODULE] [--allow-partial-weights] --opts MODEL.WEIGHTS model.pth [KEY VALUE ...]

1. One network pass over the dataset (Detectron2's test loader and the model, as
   ``train_net.py --eval-only`` runs them) keeps what the combiner needs of each image in a cache
   on disk (:mod:`panoptic_fpn_ext.evaluation.combiner_cache`): an interrupted run resumes from
   it; a cache made from other weights, config, dataset or device is refused.
2. For every setting of the grid over ``MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH``,
   ``OVERLAP_THRESH`` and ``STUFF_AREA_LIMIT`` (plus the config's own setting), the plugin's
   combiner combines every image and the PQ evaluator's statistics give PQ/SQ/RQ, things, stuff
   and per class (:mod:`panoptic_fpn_ext.evaluation.threshold_sweep`); equal to an evaluation run
   with those thresholds.
3. At one setting (``--analyze``, default the config's), where PQ is lost to the combiner's
   decisions (:mod:`panoptic_fpn_ext.evaluation.pq_errors`).

Writes to ``--output`` (default ``OUTPUT_DIR/tune_<dataset>``): ``sweep.txt`` (the best settings
by PQ and the config's), ``best_setting.yaml`` (the best as config keys), ``sweep.json``,
``sweep_thresholds.png``, ``sweep_per_class.png``, ``errors.txt``, ``errors.json``,
``errors.png`` and ``confusion.png``; every file atomically.

``--grid`` takes ``KEY=VALUES`` per threshold: KEY ``confidence``, ``overlap`` or ``stuff_area``
(or the config key's last part), VALUES a comma-separated list or ``START:STOP:COUNT`` (evenly
spaced, ends included). Thresholds not given take the default grid: confidence and overlap 0.3 to
0.7 in steps of 0.1, stuff area the config's limit times 1/4, 1/2, 1, 2, 4.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from .. import __version__
from ..data import PanopticDatasetMapper
from ..engine.weights import build_inference_model, resolve_weights
from ..evaluation.combiner_cache import CachedImage, CombinerCache, read_shard_ids
from ..evaluation.panoptic_evaluator import usable_cores
from ..evaluation.pq_errors import analyze_errors
from ..evaluation.threshold_sweep import DatasetClasses, Setting, ShardTask, sweep, sweep_key
from ..file_io import atomic_write
from .common import add_config_arguments, build_cfg, import_user_modules, parse_arguments
from .tune_plots import plot_confusion, plot_errors, plot_per_class, plot_thresholds
from .tune_report import SweepReport, error_json, error_table, parse_grid, parse_setting

logger = logging.getLogger("panoptic_fpn_ext.tools.tune")  # also when run as __main__

# A shard is written once it holds this many bytes of arrays (or SHARD_IMAGES_MAX images).
SHARD_BYTES = 64 * 2**20
SHARD_IMAGES_MAX = 64
# Config sections that do not change the network's outputs on a dataset (or that the tool
# sets itself): left out of the cache's fingerprint.
NOT_IN_FINGERPRINT = (
    "OUTPUT_DIR",
    "SEED",
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
    "DATASETS",
    "DATALOADER",
    "SOLVER",
    "TEST.EVAL_PERIOD",
    "TEST.EXPECTED_RESULTS",
    "MODEL.WEIGHTS",
    "MODEL.PANOPTIC_FPN.COMBINE",
    "PANOPTIC_FPN_EXT.EVAL",
)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: str) -> List[Any]:
    """(path, size, modification time in ns) of a file, or (path, None, None) if missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, stat.st_size, stat.st_mtime_ns]


def _config_fingerprint(cfg: CfgNode) -> str:
    """A hash of the config without the keys of :data:`NOT_IN_FINGERPRINT`."""
    values = cfg.clone()
    values.defrost()
    for key in NOT_IN_FINGERPRINT:
        *parents, last = key.split(".")
        node = values
        for parent in parents:
            node = node[parent]
        node.pop(last, None)
    return _sha256_json(values)


def cache_fingerprint(cfg: CfgNode, weights: str, records: Sequence[Dict]) -> Dict[str, Any]:
    """What the cached network outputs depend on: the weights file's contents, the config, the
    dataset's images (names, sizes, modification times), the device and the versions of torch
    and the plugin."""
    return {
        "weights_sha256": _sha256_file(weights),
        "config_sha256": _config_fingerprint(cfg),
        "dataset": cfg.DATASETS.TEST[0],
        "images_sha256": _sha256_json(
            [[r["image_id"], *_file_stamp(r["file_name"])] for r in records]
        ),
        "device": cfg.MODEL.DEVICE,
        "torch": torch.__version__,
        "panoptic_fpn_ext": __version__,
    }


def ground_truth_fingerprint(records: Sequence[Dict]) -> str:
    """A hash of the GT the sweep reads: each record's segments and its PNG's stamp."""
    return _sha256_json(
        [[r["image_id"], r["segments_info"], *_file_stamp(r["pan_seg_file_name"])] for r in records]
    )


def run_network(
    cfg: CfgNode,
    records: Sequence[Dict],
    cache: CombinerCache,
    model: Optional[torch.nn.Module] = None,
) -> int:
    """Predict the ``records`` not in ``cache`` yet (in order), writing them as shards; returns
    how many were predicted. Images and model as ``train_net.py --eval-only``: Detectron2's test
    loader with the plugin's mapper, batch 1, the model (None: ``build_inference_model``, with
    no tensor left unloaded) in eval mode without gradients."""
    done = set(json.dumps(i) for i in cache.cached_image_ids())
    todo = [r for r in records if json.dumps(r["image_id"]) not in done]
    if not todo:
        return 0
    if model is None:
        model = build_inference_model(cfg, allow_partial=False)
    loader = build_detection_test_loader(
        todo,
        mapper=PanopticDatasetMapper(cfg, is_train=False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    per_shard = max(1, min(SHARD_IMAGES_MAX, math.ceil(len(records) / (4 * usable_cores()))))
    writer = cache.writer(SHARD_BYTES, per_shard)
    try:
        with inference_context(model), torch.no_grad():
            for inputs in tqdm(loader, total=len(todo), desc="network pass", unit="image"):
                for image, output in zip(inputs, model(inputs)):
                    writer.add(CachedImage.from_output(image["image_id"], output))
    finally:
        writer.close()  # the images predicted so far, also after Ctrl-C
    return len(todo)


def shard_tasks(cache: CombinerCache, records: Sequence[Dict]) -> List[ShardTask]:
    """The cache's shards with the records of their images.

    Raises:
        ValueError: the cache does not hold every record exactly once.
    """
    by_id = {json.dumps(r["image_id"]): r for r in records}
    tasks, seen = [], set()
    for path in cache.shards():
        ids = [json.dumps(i) for i in read_shard_ids(path)]
        if any(i not in by_id or i in seen for i in ids):
            raise ValueError(f"Cache shard {path} holds images not in the dataset, or twice")
        seen.update(ids)
        tasks.append(ShardTask(path, [by_id[i] for i in ids]))
    if len(seen) != len(by_id):
        raise ValueError(f"Cache {cache.directory} lacks {len(by_id) - len(seen)} images")
    return tasks


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m panoptic_fpn_ext.tools.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", default=None, help="output folder (default: OUTPUT_DIR/tune_<dataset>)"
    )
    parser.add_argument(
        "--cache", default=None, help="folder of the network outputs (default: OUTPUT/cache)"
    )
    parser.add_argument(
        "--rebuild-cache",
        action="store_true",
        help="replace a cache made from other weights, config, dataset or device",
    )
    parser.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="KEY=VALUES",
        help="threshold values: confidence=0.3,0.5,0.7 overlap=0.2:0.8:7 stuff_area=16,64,256",
    )
    parser.add_argument(
        "--analyze",
        default="config",
        metavar="SETTING",
        help="setting of the error analysis: config (default), best, or CONFIDENCE,OVERLAP,AREA",
    )
    parser.add_argument("--top", type=int, default=10, help="settings listed in the table")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes of the sweep on the CPU (default: one per usable core)",
    )
    add_config_arguments(parser)
    return parse_arguments(parser, argv)


def check_inputs(cfg: CfgNode, records: Sequence[Dict]) -> None:
    """Refuse what the tool cannot tune, before anything is computed or written.

    Raises:
        ValueError: another combiner than the heuristic; a dataset without panoptic GT.
    """
    name = cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME
    if name != "PanopticHeuristicCombiner":
        raise ValueError(
            f"Config key MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME is {name!r}: the tool tunes the "
            "thresholds of PanopticHeuristicCombiner only"
        )
    missing = [r.get("file_name") for r in records if "pan_seg_file_name" not in r]
    if not records or missing:
        raise ValueError(
            f"Dataset {cfg.DATASETS.TEST[0]} has no panoptic ground truth "
            f"({'no records' if not records else f'no pan_seg_file_name in {missing[:3]}'})"
        )


def _write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_json(path: str, value: Dict[str, Any]) -> None:
    _write_text(path, json.dumps(value, indent=2))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool (see the module docstring); returns the exit status.

    Every check (config, dataset, weights, grid, cache) runs before the network does.
    """
    args = parse_args(argv)
    setup_logger(name="panoptic_fpn_ext")
    import_user_modules(args.imports)
    cfg = build_cfg(args.config_file, args.opts, args.dataset)
    weights = resolve_weights(cfg.MODEL.WEIGHTS)
    config_setting = Setting.from_config(cfg)
    settings = parse_grid(args.grid, config_setting)
    analyzed = parse_setting(args.analyze)
    dataset = cfg.DATASETS.TEST[0]
    records = get_detection_dataset_dicts([dataset], filter_empty=False)
    check_inputs(cfg, records)
    classes = DatasetClasses.of(dataset)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, f"tune_{dataset}")
    cache_dir = args.cache or os.path.join(output, "cache")
    # the weights checked before the cache is written
    model = build_inference_model(cfg, allow_partial=args.allow_partial)
    cache = CombinerCache(cache_dir, cache_fingerprint(cfg, weights, records), args.rebuild_cache)
    workers = args.workers or usable_cores()

    start = time.perf_counter()
    predicted = run_network(cfg, records, cache, model)
    network_seconds = time.perf_counter() - start
    tasks = shard_tasks(cache, records)
    key = sweep_key(settings, ground_truth_fingerprint(records), cfg.MODEL.DEVICE)
    start = time.perf_counter()
    with tqdm(total=len(records) * len(settings), desc="sweep", unit="image-setting") as bar:
        results_dir = cache.results_directory(key)
        totals = sweep(tasks, settings, classes, cfg.MODEL.DEVICE, workers, results_dir, bar.update)
    sweep_seconds = time.perf_counter() - start
    report = SweepReport(dataset, classes, settings, totals, config_setting)
    memory_bytes, disk_bytes = cache.bytes_per_image()
    os.makedirs(output, exist_ok=True)
    table = report.table(args.top)
    _write_text(os.path.join(output, "sweep.txt"), table + "\n")
    _write_text(os.path.join(output, "best_setting.yaml"), report.best_yaml())
    timing = {
        "images": len(records),
        "images_predicted": predicted,
        "network_pass_seconds": network_seconds,
        "sweep_seconds": sweep_seconds,
        "workers": workers,
        "cache_bytes_per_image": {"memory": memory_bytes, "disk": disk_bytes},
        "weights": cfg.MODEL.WEIGHTS,
    }
    _write_json(os.path.join(output, "sweep.json"), report.to_json(timing))
    plot_thresholds(report, os.path.join(output, "sweep_thresholds.png"))
    plot_per_class(report, os.path.join(output, "sweep_per_class.png"))
    print(table)
    print(f"\n{output}/best_setting.yaml:\n{report.best_yaml()}")

    if analyzed is None:
        analyzed = config_setting if args.analyze == "config" else settings[report.best]
    analysis = analyze_errors(tasks, analyzed, classes, cfg.MODEL.DEVICE, workers)
    errors = error_table(analysis, dataset)
    _write_text(os.path.join(output, "errors.txt"), errors + "\n")
    _write_json(os.path.join(output, "errors.json"), error_json(analysis, dataset))
    plot_errors(analysis, dataset, os.path.join(output, "errors.png"))
    plot_confusion(analysis, dataset, os.path.join(output, "confusion.png"))
    print(f"\n{errors}")
    print(
        f"\nNetwork pass: {predicted} of {len(records)} images predicted "
        f"({network_seconds:.1f} s); sweep of {len(settings)} settings: {sweep_seconds:.1f} s "
        f"with {workers} worker(s); cache {cache_dir}: {memory_bytes / 1024:.1f} KiB per image "
        f"in memory, {disk_bytes / 1024:.1f} KiB on disk. Outputs in {output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
