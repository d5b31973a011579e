"""Combiner speed: combine_panoptic vs Detectron2's combine_semantic_and_instance_outputs.

    python benchmarks/bench_combiner.py [--device cpu|cuda] [--repeats 21]

Inputs look like Mask R-CNN output at 800x1216: 28x28 blob-shaped mask probabilities pasted by
Detectron2's ``paste_masks_in_image`` into random boxes (sides 8-400 px), random scores, and a
semantic map of 10 labels in 64-px blocks; Detectron2's default thresholds. Both functions run on
the same inputs in the same process (each timed over its own repeats, after a warm-up call), and
their outputs are checked to be identical first.

The plugin is timed twice: as the model calls it, with the paste rectangles of the boxes
(``mask_boxes=paste_regions(...)``, so no full-size mask is scanned), and without them (each
considered mask is scanned once to find its rectangle).
"""

import argparse
import math
from typing import Tuple

import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Boxes, Instances

from common import command_line, machine_description, median_seconds, update_benchmarks_md
from panoptic_fpn_ext.modeling import combine_panoptic, paste_regions

HEIGHT, WIDTH = 800, 1216
THRESHOLDS = (0.5, 4096, 0.5)  # Detectron2's defaults: overlap, stuff area, score
INSTANCE_COUNTS = (10, 50, 100)


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
    rows = []
    for n in INSTANCE_COUNTS:
        instances, semantic = make_inputs(n)
        instances, semantic = instances.to(args.device), semantic.to(args.device)
        regions = paste_regions(instances.pred_boxes.tensor, HEIGHT, WIDTH)

        def reference():
            return combine_semantic_and_instance_outputs(instances, semantic, *THRESHOLDS)

        def with_regions():
            return combine_panoptic(instances, semantic, *THRESHOLDS, mask_boxes=regions)

        def masks_only():
            return combine_panoptic(instances, semantic, *THRESHOLDS)

        expected = reference()
        for fn in (with_regions, masks_only):
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
    table = "\n".join(
        f"| {n} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.1f}x | {c * 1e3:.2f} | {a / c:.1f}x |"
        for n, a, b, c in rows
    )
    update_benchmarks_md(
        f"combiner-{args.device}",
        f"## Combiner, 800x1216, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; median of {args.repeats}; "
        "outputs checked identical. Target: at least 20x at 100 instances (as the model calls "
        "it, with the masks' paste rectangles). Masks pasted by Detectron2 from 28x28 blobs into "
        "random boxes of sides 8-400 px; random scores (about half pass the 0.5 threshold).\n\n"
        "| instances | Detectron2 (ms) | plugin (ms) | speed-up | plugin, masks only (ms) "
        "| speed-up |\n|---|---|---|---|---|---|\n" + table,
    )


if __name__ == "__main__":
    main()
