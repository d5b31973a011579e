"""Combiner speed: combine_panoptic vs Detectron2's combine_semantic_and_instance_outputs.

    python benchmarks/bench_combiner.py [--device cpu|cuda] [--repeats 21]

Inputs look like Mask R-CNN output at 800x1216: 28x28 blob-shaped mask probabilities pasted by
Detectron2's ``paste_masks_in_image`` into random boxes (sides 8-400 px), random scores, and a
semantic map of 10 labels in 64-px blocks; Detectron2's default thresholds. Both functions run on
the same inputs in the same process (each timed over its own repeats, after a warm-up call), and
their outputs are checked to be identical first.

The plugin is timed twice with its default path for the device (``method="auto"``: sequential
on CPU, parallel on CUDA): as the model calls it, with the paste rectangles of the boxes
(``mask_boxes=paste_regions(...)``, so the sequential path scans no full-size mask), and without
them, as code that takes the combiner from the registry calls it (each considered mask is then
scanned once to find its rectangle; the parallel path ignores the rectangles either way). On CUDA
every call is timed to its end (synchronised), with the settings users get by default.

It also counts the operator calls (ATen operators, through a ``TorchDispatchMode``) that one call
of the parallel path makes at 10 and at 100 instances, with its fixed-point rounds: on a GPU the
kernels come from these operators (a view launches none, others one or a few), so these counts
stand in for the kernel count per image.
"""

import argparse
import math
from typing import Callable, Tuple

import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Boxes, Instances
from torch.utils._python_dispatch import TorchDispatchMode

from common import command_line, machine_description, median_seconds, update_benchmarks_md
from panoptic_fpn_ext.modeling import combine_panoptic, paste_regions
from panoptic_fpn_ext.modeling.fixed_point import combine_parallel

HEIGHT, WIDTH = 800, 1216
THRESHOLDS = (0.5, 4096, 0.5)  # Detectron2's defaults: overlap, stuff area, score
INSTANCE_COUNTS = (10, 50, 100)
OPERATOR_COUNT_INSTANCES = (10, 100)


class OperatorCounter(TorchDispatchMode):
    """Counts the ATen operator calls made inside its ``with`` block (``self.count``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operators(fn: Callable[[], object]) -> int:
    """The number of ATen operator calls ``fn()`` makes."""
    with OperatorCounter() as counter:
        fn()
    return counter.count


def parallel_operators(
    instances: Instances, semantic: torch.Tensor, thresholds=THRESHOLDS
) -> Tuple[int, int]:
    """(operator calls of one ``combine_panoptic(..., method="parallel")``, its fixed-point
    rounds) on these inputs."""
    count = count_operators(
        lambda: combine_panoptic(instances, semantic, *thresholds, method="parallel")
    )
    masks = instances.pred_masks.to(dtype=torch.bool, device=semantic.device)
    _, rounds = combine_parallel(masks, instances.scores, semantic, *thresholds)
    return count, rounds


def chain_case(num_instances: int) -> Tuple[Instances, torch.Tensor]:
    """Instances that take the parallel path ``num_instances`` rounds: 1-px-high strips of 10 px,
    each starting 4 px right of the one before, in score order. Each overlaps the one before by
    6 px (over the 0.5 threshold) and the one two before by 2 px, so Detectron2 keeps every other
    one, and each round settles one more. Returns CPU Instances and an all-1 int64 (1, W) map."""
    width = 4 * num_instances + 6
    instances = Instances((1, width))
    masks = torch.zeros(num_instances, 1, width, dtype=torch.bool)
    for k in range(num_instances):
        masks[k, 0, 4 * k : 4 * k + 10] = True
    instances.pred_masks = masks
    instances.scores = torch.linspace(0.9, 0.6, num_instances)
    instances.pred_classes = torch.zeros(num_instances, dtype=torch.int64)
    return instances, torch.ones(1, width, dtype=torch.int64)


def operators_per_round() -> int:
    """The operator calls one fixed-point round adds: the difference of two chain cases' counts
    over the difference of their rounds."""
    (few, few_rounds), (many, many_rounds) = (parallel_operators(*chain_case(n)) for n in (2, 8))
    return (many - few) // (many_rounds - few_rounds)


def blob_probabilities(num: int, generator: torch.Generator, size: int = 28) -> torch.Tensor:
    """float (num, size, size) mask probabilities: a noisy elliptic blob filling most of each."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    radii = 0.6 + 0.4 * torch.rand(num, 2, generator=generator)
    dist = (grid.view(1, -1, 1) / radii[:, 0, None, None]) ** 2 + (
        grid.view(1, 1, -1) / radii[:, 1, None, None]
    ) ** 2
    noise = torch.randn(num, size, size, generator=generator)
    return torch.sigmoid(4 * (1 - dist) + noise)


def make_inputs(num_instances: int, seed: int = 0) -> Tuple[Instances, torch.Tensor]:
    """CPU Instances (pred_boxes, scores, pred_classes, bool pred_masks (N, H, W)) and int64
    (H, W) semantic labels."""
    g = torch.Generator().manual_seed(seed)
    sides = 8 + torch.rand(num_instances, 2, generator=g) * 392
    corner = torch.rand(num_instances, 2, generator=g) * torch.tensor([WIDTH, HEIGHT]) - sides / 2
    boxes = Boxes(torch.cat([corner, corner + sides], dim=1))
    boxes.clip((HEIGHT, WIDTH))
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_boxes = boxes
    instances.scores = torch.rand(num_instances, generator=g)
    instances.pred_classes = torch.randint(0, 80, (num_instances,), generator=g)
    probabilities = blob_probabilities(num_instances, g)
    instances.pred_masks = paste_masks_in_image(probabilities, boxes, (HEIGHT, WIDTH))
    block = 64
    coarse = torch.randint(
        0, 10, (math.ceil(HEIGHT / block), math.ceil(WIDTH / block)), generator=g
    )
    semantic = coarse.repeat_interleave(block, 0)[:HEIGHT].repeat_interleave(block, 1)[:, :WIDTH]
    return instances, semantic.contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    rows, operators = [], []
    for n in INSTANCE_COUNTS:
        instances, semantic = make_inputs(n)
        if n in OPERATOR_COUNT_INSTANCES:
            operators.append((n, *parallel_operators(instances, semantic)))
        instances, semantic = instances.to(args.device), semantic.to(args.device)
        regions = paste_regions(instances.pred_boxes.tensor, HEIGHT, WIDTH)

        def reference():
            return combine_semantic_and_instance_outputs(instances, semantic, *THRESHOLDS)

        def with_regions():
            return combine_panoptic(instances, semantic, *THRESHOLDS, mask_boxes=regions)

        def masks_only():
            return combine_panoptic(instances, semantic, *THRESHOLDS)

        def parallel():
            return combine_panoptic(instances, semantic, *THRESHOLDS, method="parallel")

        expected = reference()
        for fn in (with_regions, masks_only, parallel):
            out = fn()
            assert torch.equal(expected[0], out[0]) and expected[1] == out[1], "outputs differ"
        times = [median_seconds(fn, args.repeats) for fn in (reference, with_regions, masks_only)]
        rows.append((n, *times))
        print(
            f"{n:4d} instances: Detectron2 {times[0] * 1e3:7.2f} ms | plugin "
            f"{times[1] * 1e3:6.2f} ms ({times[0] / times[1]:5.1f}x) | plugin, masks only "
            f"{times[2] * 1e3:6.2f} ms ({times[0] / times[2]:5.1f}x)",
            flush=True,
        )
    per_round = operators_per_round()
    counts = "; ".join(
        f"{n} instances: {count} (rounds: {rounds})" for n, count, rounds in operators
    )
    print(f"parallel path, operator calls: {counts}; {per_round} per round", flush=True)
    table = "\n".join(
        f"| {n} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.1f}x | {c * 1e3:.2f} | {a / c:.1f}x |"
        for n, a, b, c in rows
    )
    if args.device == "cpu":
        threads = torch.get_num_threads()
        path = f"sequential (compiled loops; masks located by {threads} threads)"
        target = "at least 20x at 100 instances, with and without the paste rectangles"
    else:
        path = "parallel, default settings"
        target = "at least 10x at 100 instances"
    update_benchmarks_md(
        f"combiner-{args.device}",
        f"## Combiner, 800x1216, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; median of {args.repeats}; "
        f"outputs (also of the parallel path) checked identical. Target: {target}. Masks pasted "
        "by Detectron2 from 28x28 blobs into random boxes of sides 8-400 px; random scores "
        "(about half pass the 0.5 threshold).\n\n"
        "| instances | Detectron2 (ms) | plugin (ms) | speed-up | plugin, masks only (ms) "
        "| speed-up |\n|---|---|---|---|---|---|\n" + table + "\n\n"
        f"Plugin path timed: {path}. Operator calls of one call of the parallel path (ATen "
        f"operators, counted on CPU; on a GPU they launch the kernels): {counts}; one "
        f"fixed-point round adds {per_round}.",
    )


if __name__ == "__main__":
    main()
