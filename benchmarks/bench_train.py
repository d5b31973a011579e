"""Training-iteration time and peak memory: PanopticFPNExt vs Detectron2's PanopticFPN.

    python benchmarks/bench_train.py [--device cpu|cuda] [--amp] [--size H W] [--repeats 3]

One iteration = forward with losses, backward of their sum, and an SGD step (Detectron2's
``build_optimizer``: momentum 0.9, weight decay 1e-4), on a fixed batch of 2 synthetic "shapes"
scenes in Detectron2's training input format (BGR uint8 image, ``Instances`` with gt_boxes,
gt_classes and bitmask gt_masks, int64 ``sem_seg`` with 0 = things, stuff 1..3, 255 = void).
Default size: 384x640 on CPU (an 800x1333 iteration takes minutes on 2 cores), 800x1333 on CUDA.

Both models come from their COCO panoptic R50-FPN 1x configs with the same weights (Detectron2's
randomly initialised with a fixed seed and calibrated as in ``bench_inference.py``, then loaded
strictly into the plugin). Before timing, one iteration of each from identical states (same
weights, same RNG state for the proposal sampling) is checked to give the same losses. Times are
medians over alternating iterations of the two models (each model keeps training on the batch).

Peak memory: each model runs in a fresh process (so that the peaks do not mix) one warm-up
iteration (which allocates the optimizer state), then the measured one. On CPU it is the growth
of the peak resident set during the measured iteration (Linux: /proc/self/clear_refs); on CUDA,
``torch.cuda.max_memory_allocated`` minus the memory allocated before it. ``--amp`` adds rows
with automatic mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU).
"""

import argparse
import multiprocessing
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from bench_inference import calibrate, model_config
from common import (
    command_line,
    machine_description,
    median_seconds,
    reset_peak_rss,
    status_kib,
    update_benchmarks_md,
)
from panoptic_fpn_ext.data.synthetic import THING_IDS, random_shapes_scene
from panoptic_fpn_ext.modeling import PanopticFPNExt  # noqa: F401 (registers the meta-arch)

STUFF_LABELS = {11: 1, 12: 2, 13: 3}  # sky, ground, water -> semantic labels (0 = things)
IGNORE = 255
LOSS_RTOL = 1e-4


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
    batch = [make_example(height, width, seed + k) for k in range(num_images)]
    for example in batch:
        example["instances"] = example["instances"].to(device)
        example["image"] = example["image"].to(device)
        example["sem_seg"] = example["sem_seg"].to(device)
    return batch


def build_models(
    batch: List[Dict], device: str = "cpu", seed: int = 0
) -> Tuple[nn.Module, nn.Module]:
    """Detectron2's PanopticFPN (random init with ``seed``, calibrated on ``batch``) and
    PanopticFPNExt with its state_dict loaded strictly; both in training mode on ``device``."""
    torch.manual_seed(seed)
    reference = build_model_for("reference", device)
    calibrate(reference, batch)
    plugin = build_model_for("plugin", device)
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return reference.train(), plugin.train()


def build_model_for(route: str, device: str) -> nn.Module:
    """An unloaded model: Detectron2's ("reference") or the plugin's ("plugin")."""
    return build_model(model_config(plugin=route == "plugin", device=device))


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


def check_same_losses(reference: Trainer, plugin: Trainer, seed: int = 0) -> Dict[str, float]:
    """One iteration of each from the same RNG state; AssertionError unless the loss dicts have
    the same keys and values equal to ``LOSS_RTOL`` (relative). Returns the reference's losses.

    The models must hold the same weights. The plugin's semantic loss is a sum divided by the
    number of labelled pixels, Detectron2's a mean, so the two agree to rounding, not bitwise.
    """
    torch.manual_seed(seed)
    expected = reference()
    torch.manual_seed(seed)
    actual = plugin()
    assert expected.keys() == actual.keys(), f"loss names differ: {expected.keys()} {actual.keys()}"
    for name, value in expected.items():
        assert np.isfinite(value), f"{name} is not finite: {value}"
        assert abs(actual[name] - value) <= LOSS_RTOL * abs(
            value
        ), f"{name} differs: Detectron2 {value}, plugin {actual[name]}"
    return expected


def alternating_medians(
    fns: List[Callable[[], object]], repeats: int, warmup: int = 1
) -> List[float]:
    """Median seconds of each of ``fns``, timed in alternation (one call of each per round, after
    ``warmup`` rounds), so that a change of load on a shared machine affects all of them alike."""
    times: List[List[float]] = [[] for _ in fns]
    for round_index in range(warmup + repeats):
        for fn, fn_times in zip(fns, times):
            seconds = median_seconds(fn, repeats=1, warmup=0)
            if round_index >= warmup:
                fn_times.append(seconds)
    return [float(np.median(t)) for t in times]


def measure_time(
    reference: nn.Module, plugin: nn.Module, batch: List[Dict], repeats: int, amp: bool = False
) -> Dict[str, object]:
    """Check the losses equal, then time training iterations of the two models.

    The models must hold the same weights; both are trained in place. Returns {"losses": the
    checked loss dict, "reference", "plugin": median seconds per iteration}.
    """
    trainers = Trainer(reference, batch, amp), Trainer(plugin, batch, amp)
    losses = check_same_losses(*trainers)
    reference_time, plugin_time = alternating_medians(list(trainers), repeats)
    return {"losses": losses, "reference": reference_time, "plugin": plugin_time}


# ---------------------------------------------------------------- peak memory


def _memory_probe(route: str, size: Tuple[int, int], device: str, amp: bool, seed: int) -> float:
    """In a fresh process: MiB added at the peak of one training iteration of ``route``'s model
    (after a warm-up iteration that allocates the optimizer state)."""
    batch = make_batch(2, *size, device, seed)
    reference, plugin = build_models(batch, device, seed)
    model = plugin if route == "plugin" else reference
    del reference, plugin
    trainer = Trainer(model.train(), batch, amp)
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


def _send_memory_probe(connection, *args) -> None:
    connection.send(_memory_probe(*args))


def peak_memory(route: str, size: Tuple[int, int], device: str, amp: bool, seed: int) -> float:
    """:func:`_memory_probe` in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_send_memory_probe, args=(sender, route, size, device, amp, seed)
    )
    process.start()
    sender.close()  # the child's copy is the only writer left: recv() fails if the child dies
    try:
        return receiver.recv()
    except EOFError:
        raise RuntimeError(
            f"the memory probe of {route} exited with code {process.join() or process.exitcode}"
        ) from None
    finally:
        process.join()


# ---------------------------------------------------------------- main


def measure_all(args: argparse.Namespace) -> List[Dict[str, object]]:
    """One row per precision (fp32, and AMP with ``--amp``): times, losses and peak memory."""
    rows = []
    for amp in (False, True) if args.amp else (False,):
        batch = make_batch(2, *args.size, args.device, args.seed)
        reference, plugin = build_models(batch, args.device, args.seed)
        row = measure_time(reference, plugin, batch, args.repeats, amp)
        del reference, plugin, batch
        for route in ("reference", "plugin"):
            row[route + "_memory"] = peak_memory(route, args.size, args.device, amp, args.seed)
        row["precision"] = "AMP" if amp else "fp32"
        rows.append(row)
        print(
            f"{row['precision']}: Detectron2 {row['reference']:.2f} s, "
            f"{row['reference_memory']:.0f} MiB | plugin {row['plugin']:.2f} s "
            f"({row['plugin'] / row['reference']:.3f}x), {row['plugin_memory']:.0f} MiB "
            f"({row['plugin_memory'] / row['reference_memory']:.3f}x)",
            flush=True,
        )
    return rows


def report(args: argparse.Namespace, rows: List[Dict[str, object]]) -> None:
    """Write the ``train-{device}`` block of BENCHMARKS.md."""
    height, width = args.size
    memory = "peak RSS growth" if args.device == "cpu" else "peak allocated growth"
    table = "\n".join(
        f"| {r['precision']} | {r['reference']:.2f} | {r['plugin']:.2f} | "
        f"{r['plugin'] / r['reference']:.3f}x | {r['reference_memory']:.0f} | "
        f"{r['plugin_memory']:.0f} | {r['plugin_memory'] / r['reference_memory']:.3f}x |"
        for r in rows
    )
    worst = max(
        max(r["plugin"] / r["reference"], r["plugin_memory"] / r["reference_memory"]) for r in rows
    )
    summary = f"Plugin / Detectron2, worst of time and memory: **{worst:.3f}x** (target " + (
        "met)." if worst <= 1.0 else "missed)."
    )
    if len(rows) == 2:
        speedup = {route: rows[0][route] / rows[1][route] for route in ("reference", "plugin")}
        summary += (
            f" AMP vs fp32: Detectron2 {speedup['reference']:.2f}x, plugin "
            f"{speedup['plugin']:.2f}x faster (target: at least 1.5x on GPU)."
        )
    losses = ", ".join(f"{k} {v:.3g}" for k, v in rows[0]["losses"].items())
    update_benchmarks_md(
        f"train-{args.device}",
        f"## Training iteration, R50-FPN, 2 images of {height}x{width}, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; median of {args.repeats} "
        "iterations per model, alternating. One iteration: forward with losses, backward, SGD "
        "step (Detectron2's build_optimizer). Same weights (random init, seed "
        f'{args.seed}, calibrated as in bench_inference.py) and batch (2 synthetic "shapes" '
        "scenes with instance masks and semantic targets); losses of the first iteration "
        f"checked equal to {LOSS_RTOL:g} relative ({losses}). Memory: {memory} during one "
        "iteration after a warm-up one, each model in a fresh process. Target: plugin at most "
        "1.0x Detectron2's time and memory.\n\n"
        "| precision | Detectron2 (s) | plugin (s) | plugin / Detectron2 | Detectron2 (MiB) "
        "| plugin (MiB) | plugin / Detectron2 |\n|---|---|---|---|---|---|---|\n"
        + table
        + "\n\n"
        + summary,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="also measure mixed precision")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.size is None:
        args.size = (384, 640) if args.device == "cpu" else (800, 1333)
    report(args, measure_all(args))


if __name__ == "__main__":
    main()
