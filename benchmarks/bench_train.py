"""Training-iteration time and peak memory: PanopticFPNExt vs Detectron2's PanopticFPN.

    python benchmarks/bench_train.py [--case shapes|coco] [--device cpu|cuda] [--amp] [--size H W]
        [--repeats 3]

One iteration = forward with losses, backward of their sum, and an SGD step (Detectron2's
``build_optimizer``: momentum 0.9, weight decay 1e-4), on a fixed batch of 2 synthetic "shapes"
scenes in Detectron2's training input format (BGR uint8 image, ``Instances`` with gt_boxes,
gt_classes and bitmask gt_masks, int64 ``sem_seg`` with 0 = things, stuff 1..3, 255 = void).
Default size: 384x640 on CPU (an 800x1333 iteration takes minutes on 2 cores), 800x1333 on CUDA.

``--case coco``: 2 generated COCO-like images (``coco_like.py``: median 25 thing instances),
shorter side 800 (800x1067), as each route's own data pipeline gives them: Detectron2's default
``DatasetMapper`` on the "separated" files (polygon masks, int64 ``sem_seg``) for its model, the
plugin's ``PanopticDatasetMapper`` (``CroppedMasks``, uint8 ``sem_seg``) for the plugin. The loss
check then compares the plugin's losses with those of Detectron2's model on the plugin's own
targets as ``BitMasks`` and int64 ``sem_seg`` (the same targets); times and memory are each
model's on its own route's batch.

The models come from their COCO panoptic R50-FPN 1x configs with the same weights (Detectron2's
randomly initialised with a fixed seed and calibrated as in ``bench_inference.py``, then loaded
strictly into the plugin); the plugin runs with its default config
(``MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT "auto"``: contiguous in training, on CPU and CUDA) and
with the other layout set explicitly. Before timing, one iteration of each from identical states
(same weights, same RNG state for the proposal sampling) is checked, with TF32 off on a GPU
(``common.tf32_disabled``), to give Detectron2's losses: to ``LOSS_RTOL`` in the contiguous
layout, to ``CHANNELS_LAST_LOSS_RTOL`` in channels-last (its float rounding can reorder
near-tied proposals, so the sampled RoIs may differ slightly). Times are medians over rounds of
one iteration of each model (each model keeps training on the batch), taken with the settings
users get (torch's defaults: TF32 cuDNN convolutions on a GPU), named in the block.

Peak memory: each model runs in a fresh process (so that the peaks do not mix) one warm-up
iteration (which allocates the optimizer state), then the measured one. On CPU it is the growth
of the peak resident set during the measured iteration (Linux: /proc/self/clear_refs), with
glibc's mmap threshold fixed (see ``common.in_fresh_process``); on CUDA,
``torch.cuda.max_memory_allocated`` minus the memory allocated before it. ``--amp`` adds rows
with automatic mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU).
"""

import argparse
import tempfile
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from torch import nn

import bench_loader
import coco_like
from bench_inference import calibrate, layout_name, model_config, other_layout
from common import (
    alternating_medians,
    command_line,
    PROBE_MMAP_THRESHOLD,
    in_fresh_process,
    machine_description,
    reset_peak_rss,
    status_kib,
    tf32_disabled,
    update_benchmarks_md,
)
from panoptic_fpn_ext.data.synthetic import THING_IDS, random_shapes_scene
from panoptic_fpn_ext.modeling import PanopticFPNExt  # noqa: F401 (registers the meta-arch)

STUFF_LABELS = {11: 1, 12: 2, 13: 3}  # sky, ground, water -> semantic labels (0 = things)
IGNORE = 255
LOSS_RTOL = 1e-4
CHANNELS_LAST_LOSS_RTOL = 1e-2
# The models measured: Detectron2's, the plugin's default config (MEMORY_FORMAT "auto"), the
# plugin in the layout that "auto" does not pick on the device.
ROUTES = ("reference", "plugin", "other")
CASES = ("shapes", "coco")
COCO_MIN_SIZE = 800
CASE_TITLES = {"shapes": "2 images of {}x{}", "coco": "2 COCO-like images of ~{}x{}"}
CASE_BATCHES = {
    "shapes": 'one batch for all (2 synthetic "shapes" scenes with instance masks and semantic '
    "targets)",
    "coco": "each model on its own route's batch of the same 2 generated COCO-like images "
    "(median 25 thing instances; Detectron2's DatasetMapper on the separated files: polygons, "
    "int64 sem_seg; the plugin's PanopticDatasetMapper: CroppedMasks, uint8 sem_seg); the loss "
    "check runs Detectron2's model on the plugin's targets as BitMasks and int64 sem_seg",
}


def make_example(height: int, width: int, seed: int) -> Dict:
    """One training input: a random "shapes" scene with its instance and semantic targets.

    Returns:
        {"image": uint8 (3, H, W) BGR, "instances": Instances (gt_boxes, gt_classes 0..2,
        gt_masks BitMasks (N, H, W)) of the non-crowd things, "sem_seg": int64 (H, W)}.
    """
    rng = np.random.default_rng(seed)
    rgb, ids, segments = random_shapes_scene(height, width, rng)
    sem_seg = np.full((height, width), IGNORE, dtype=np.int64)
    masks, classes = [], []
    for segment in segments:
        mask = ids == segment["id"]
        if segment["category_id"] in THING_IDS:
            sem_seg[mask] = 0
            if not segment["iscrowd"]:
                masks.append(mask)
                classes.append(THING_IDS.index(segment["category_id"]))
        else:
            sem_seg[mask] = STUFF_LABELS[segment["category_id"]]
    instances = Instances((height, width))
    instances.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)).reshape(-1, height, width))
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    image = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    return {"image": image, "instances": instances, "sem_seg": torch.from_numpy(sem_seg)}


def make_batch(num_images: int, height: int, width: int, device: str, seed: int = 0) -> List[Dict]:
    """``num_images`` examples from :func:`make_example` (seeds ``seed``, ``seed + 1``, ...)."""
    return _to_device([make_example(height, width, seed + k) for k in range(num_images)], device)


def _to_device(batch: List[Dict], device: str) -> List[Dict]:
    for example in batch:
        for key in ("instances", "image", "sem_seg"):
            example[key] = example[key].to(device)
    return batch


def coco_batches(device: str, seed: int = 0) -> Dict[str, List[Dict]]:
    """Batches of 2 COCO-like images (see the module): "reference" from Detectron2's route,
    "plugin" from the plugin's, "bitmasks" the plugin's with ``BitMasks`` and int64 sem_seg."""
    mappers = bench_loader.mappers(min_sizes=(COCO_MIN_SIZE,))
    batches = {"reference": [], "plugin": []}
    with tempfile.TemporaryDirectory() as directory:
        records = dict(zip(("plugin", "reference"), coco_like.generate(directory, 2, seed)))
        for route, mapper in (("plugin", mappers["plugin"]), ("reference", mappers["detectron2"])):
            for draw, record in enumerate(records[route]):
                batches[route].append(bench_loader.timed_map(mapper, record, seed + draw)[0])
    batches["bitmasks"] = []
    for example in batches["plugin"]:
        instances = Instances(example["instances"].image_size, **example["instances"].get_fields())
        instances.gt_masks = BitMasks(instances.gt_masks.tensor)
        batches["bitmasks"].append(
            dict(example, instances=instances, sem_seg=example["sem_seg"].long())
        )
    return {route: _to_device(batch, device) for route, batch in batches.items()}


def case_batches(case: str, size: Tuple[int, int], device: str, seed: int) -> Tuple[Dict, Dict]:
    """(the batch each route of :data:`ROUTES` trains on, the batch of its loss check)."""
    if case == "shapes":
        batch = make_batch(2, *size, device, seed)
        batches = {route: batch for route in ROUTES}
        return batches, batches
    coco = coco_batches(device, seed)
    timed = {"reference": coco["reference"], "plugin": coco["plugin"], "other": coco["plugin"]}
    return timed, {**timed, "reference": coco["bitmasks"]}


def build_models(
    batch: List[Dict], device: str = "cpu", seed: int = 0
) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """Detectron2's PanopticFPN (random init with ``seed``, calibrated on ``batch``) and
    PanopticFPNExt with its state_dict loaded strictly, with its default config and in the other
    layout (the models of :data:`ROUTES`); all in training mode on ``device``."""
    torch.manual_seed(seed)
    reference = build_model_for("reference", device)
    calibrate(reference, batch)
    plugins = []
    for route in ROUTES[1:]:
        plugin = build_model_for(route, device)
        plugin.load_state_dict(reference.state_dict(), strict=True)
        plugins.append(plugin.train())
    return (reference.train(), *plugins)


def build_model_for(route: str, device: str) -> nn.Module:
    """An unloaded model of one of :data:`ROUTES`."""
    memory_format = other_layout(device, training=True) if route == "other" else "auto"
    return build_model(model_config(route != "reference", device, memory_format))


class Trainer:
    """One model, its optimizer (Detectron2's ``build_optimizer`` from the model's config, at the
    learning rate of the first warm-up iteration, BASE_LR * WARMUP_FACTOR: the full rate makes
    the randomly initialised model diverge within a few steps) and a fixed batch; calling it runs
    one training iteration and returns the float loss values."""

    def __init__(self, model: nn.Module, batch: List[Dict], amp: bool = False):
        self.model, self.batch, self.amp = model, batch, amp
        self.device = next(model.parameters()).device.type
        cfg = model_config(plugin=isinstance(model, PanopticFPNExt), device=self.device)
        self.optimizer = build_optimizer(cfg, model)
        for group in self.optimizer.param_groups:  # the first step of Detectron2's LR warm-up
            group["lr"] *= cfg.SOLVER.WARMUP_FACTOR
        self.scaler = torch.amp.GradScaler(self.device, enabled=amp and self.device == "cuda")
        self.storage = EventStorage()

    def __call__(self) -> Dict[str, float]:
        dtype = torch.float16 if self.device == "cuda" else torch.bfloat16
        with self.storage, torch.autocast(self.device, dtype=dtype, enabled=self.amp):
            losses = self.model(self.batch)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {name: float(value.detach()) for name, value in losses.items()}


def first_losses(trainer: Trainer, seed: int = 0) -> Dict[str, float]:
    """The losses of ``trainer``'s next iteration, run from RNG state ``seed`` (the same proposal
    sampling for every model that holds the same weights)."""
    torch.manual_seed(seed)
    return trainer()


def compare_losses(expected: Dict[str, float], actual: Dict[str, float], rtol: float) -> float:
    """AssertionError unless the two loss dicts have the same keys and values equal to ``rtol``
    (relative); returns the largest relative difference.

    The plugin's semantic loss is a sum divided by the number of labelled pixels, Detectron2's a
    mean, so the two agree to rounding, not bitwise.
    """
    assert expected.keys() == actual.keys(), f"loss names differ: {expected.keys()} {actual.keys()}"
    largest = 0.0
    for name, value in expected.items():
        assert np.isfinite(value), f"{name} is not finite: {value}"
        difference = abs(actual[name] - value) / abs(value)
        assert difference <= rtol, f"{name} differs: Detectron2 {value}, plugin {actual[name]}"
        largest = max(largest, difference)
    return largest


def measure_time(
    models: Tuple[nn.Module, nn.Module, nn.Module],
    batches: Union[List[Dict], Dict[str, List[Dict]]],
    repeats: int,
    amp: bool = False,
    check_batches: Dict[str, List[Dict]] = None,
) -> Dict[str, object]:
    """Check the losses, then time training iterations of the models of :data:`ROUTES`.

    ``batches``: one batch for every route, or the batch of each route. The models must hold
    the same weights; they are trained in place. Their first iterations, on ``check_batches``
    (default ``batches``), from the same RNG
    state and with TF32 off, give the losses checked (to ``LOSS_RTOL`` in the contiguous layout,
    ``CHANNELS_LAST_LOSS_RTOL`` in channels-last); the timed iterations run on ``batches``.
    Returns {"losses": the reference's first losses, "channels_last_difference": the largest
    relative loss difference of the channels-last plugin, "plugin_layout" and "other_layout"
    (``layout_name``), and per route: median seconds per iteration}.
    """
    if isinstance(batches, list):
        batches = {route: batches for route in ROUTES}
    check_batches = check_batches or batches
    checked = [Trainer(m, check_batches[route], amp) for route, m in zip(ROUTES, models)]
    with tf32_disabled():
        losses, *plugin_losses = (first_losses(trainer) for trainer in checked)
    result = {"losses": losses}
    for route, model, actual in zip(ROUTES[1:], models[1:], plugin_losses):
        result[route + "_layout"] = layout_name(model)
        if result[route + "_layout"] == "contiguous":
            compare_losses(losses, actual, LOSS_RTOL)
        else:
            difference = compare_losses(losses, actual, CHANNELS_LAST_LOSS_RTOL)
            result["channels_last_difference"] = difference
    trainers = [Trainer(model, batches[route], amp) for route, model in zip(ROUTES, models)]
    times = alternating_medians(trainers, repeats)
    return {**result, **dict(zip(ROUTES, times))}


# ---------------------------------------------------------------- peak memory


def _memory_probe(
    route: str, case: str, size: Tuple[int, int], device: str, amp: bool, seed: int
) -> float:
    """In a fresh process: MiB added at the peak of one training iteration of ``route``'s model
    (after a warm-up iteration that allocates the optimizer state)."""
    batches, _ = case_batches(case, size, device, seed)
    models = dict(zip(ROUTES, build_models(batches["reference"], device, seed)))
    model = models.pop(route)
    del models
    trainer = Trainer(model.train(), batches[route], amp)
    torch.manual_seed(seed)
    trainer()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        trainer()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = reset_peak_rss()
    trainer()
    return (status_kib("VmHWM") - before) / 1024


# ---------------------------------------------------------------- main


def measure_all(args: argparse.Namespace) -> List[Dict[str, object]]:
    """One row per precision (fp32, and AMP with ``--amp``): times, losses and peak memory."""
    rows = []
    for amp in (False, True) if args.amp else (False,):
        batches, check = case_batches(args.case, args.size, args.device, args.seed)
        models = build_models(batches["reference"], args.device, args.seed)
        row = measure_time(models, batches, args.repeats, amp, check)
        del batches, check, models
        for route in ROUTES:
            row[route + "_memory"] = in_fresh_process(
                _memory_probe, route, args.case, args.size, args.device, amp, args.seed
            )
        row["precision"] = "AMP" if amp else "fp32"
        rows.append(row)
        print(
            f"{row['precision']}: Detectron2 {row['reference']:.2f} s, "
            f"{row['reference_memory']:.0f} MiB"
            + "".join(
                f" | {name} {row[route]:.2f} s ({row[route] / row['reference']:.3f}x), "
                f"{row[route + '_memory']:.0f} MiB "
                f"({row[route + '_memory'] / row['reference_memory']:.3f}x)"
                for route, name in (
                    ("plugin", f"plugin (auto: {row['plugin_layout']})"),
                    ("other", f"plugin MEMORY_FORMAT {row['other_layout']}"),
                )
            ),
            flush=True,
        )
    return rows


def _table_row(row: Dict[str, object], route: str, label: str) -> str:
    time_ratio = row[route] / row["reference"]
    memory_ratio = row[route + "_memory"] / row["reference_memory"]
    return (
        f"| {row['precision']} | {label} | {row['reference']:.2f} | {row[route]:.2f} | "
        f"{time_ratio:.3f}x | {row['reference_memory']:.0f} | {row[route + '_memory']:.0f} | "
        f"{memory_ratio:.3f}x |"
    )


def report(args: argparse.Namespace, rows: List[Dict[str, object]]) -> None:
    """Write the ``train-{device}`` block of BENCHMARKS.md (``train-coco-{device}`` for the
    COCO-like case)."""
    height, width = args.size
    memory = "peak RSS growth" if args.device == "cpu" else "peak allocated growth"
    table = "\n".join(
        _table_row(r, route, label)
        for r in rows
        for route, label in (
            ("plugin", f"default (`auto`: {r['plugin_layout']})"),
            ("other", f"`MEMORY_FORMAT {r['other_layout']}`"),
        )
    )
    worst = max(
        max(r["plugin"] / r["reference"], r["plugin_memory"] / r["reference_memory"]) for r in rows
    )
    summary = (
        f"Plugin (default config) / Detectron2, worst of time and memory: **{worst:.3f}x** "
        + ("(target met)." if worst <= 1.0 else "(target missed).")
    )
    if len(rows) == 2:
        speedup = {route: rows[0][route] / rows[1][route] for route in ROUTES}
        summary += (
            f" AMP vs fp32: Detectron2 {speedup['reference']:.2f}x, plugin "
            f"{speedup['plugin']:.2f}x (`MEMORY_FORMAT {rows[0]['other_layout']}`: "
            f"{speedup['other']:.2f}x) faster "
            "(target: at least 1.5x on GPU)."
        )
    losses = ", ".join(f"{k} {v:.3g}" for k, v in rows[0]["losses"].items())
    differences = ", ".join(f"{r['channels_last_difference']:.1e}" for r in rows)
    update_benchmarks_md(
        "train-" + ("" if args.case == "shapes" else "coco-") + args.device,
        f"## Training iteration, R50-FPN, {CASE_TITLES[args.case].format(height, width)}, "
        f"{args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; median of {args.repeats} "
        "rounds of one iteration per model, alternating. One iteration: forward with losses, "
        "backward, SGD step (Detectron2's build_optimizer). Same weights (random init, seed "
        f"{args.seed}, calibrated as in bench_inference.py), {CASE_BATCHES[args.case]}; losses "
        f"of the first iteration checked (with TF32 off on a GPU) equal to {LOSS_RTOL:g} "
        f"relative in the contiguous layout ({losses}) and to {CHANNELS_LAST_LOSS_RTOL:g} in "
        "channels-last (largest difference "
        f"{differences}: float rounding can reorder near-tied proposals, and so the sampled "
        f"RoIs). Memory: {memory} during one iteration after a warm-up one, each model in a "
        f"fresh process (glibc mmap threshold {PROBE_MMAP_THRESHOLD // 1024} KiB, so that freed "
        "buffers leave the resident set and the figure repeats from run to run). Target: plugin "
        "at "
        "most 1.0x Detectron2's time and memory.\n\n"
        "| precision | plugin config | Detectron2 (s) | plugin (s) | plugin / Detectron2 "
        "| Detectron2 (MiB) | plugin (MiB) | plugin / Detectron2 |\n"
        "|---|---|---|---|---|---|---|---|\n" + table + "\n\n" + summary,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="shapes", choices=CASES)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="also measure mixed precision")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.case == "coco":
        args.size = (COCO_MIN_SIZE, round(COCO_MIN_SIZE * 640 / 480))  # for the title only
    elif args.size is None:
        args.size = (384, 640) if args.device == "cpu" else (800, 1333)
    report(args, measure_all(args))


if __name__ == "__main__":
    main()
