"""Combiner speed: combine_panoptic vs Detectron2's combine_semantic_and_instance_outputs.

    python benchmarks/bench_combiner.py [--device cpu|cuda] [--repeats 5]

Inputs look like Mask R-CNN output at 800x1216: elliptic blobs inside random boxes (8-400 px),
random scores, a semantic map of ~10 labels in blocks. Both functions run on the same inputs in
the same process; their outputs are checked to be identical before timing.
"""

import argparse
import math

import torch
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances

from common import command_line, machine_description, median_seconds, update_benchmarks_md
from panoptic_fpn_ext.modeling import combine_panoptic

HEIGHT, WIDTH = 800, 1216
THRESHOLDS = (0.5, 4096, 0.5)  # Detectron2's defaults: overlap, stuff area, score


def make_inputs(num_instances: int, device: str, seed: int = 0):
    """Instances with (N, H, W) bool blob masks, and an int64 (H, W) semantic map."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(HEIGHT).view(-1, 1).float()
    xs = torch.arange(WIDTH).view(1, -1).float()
    masks = torch.zeros(num_instances, HEIGHT, WIDTH, dtype=torch.bool)
    for k in range(num_instances):
        bh, bw = (8 + torch.rand(2, generator=g) * 392).tolist()
        cy = float(torch.rand(1, generator=g)) * HEIGHT
        cx = float(torch.rand(1, generator=g)) * WIDTH
        masks[k] = ((ys - cy) / (bh / 2)) ** 2 + ((xs - cx) / (bw / 2)) ** 2 <= 1
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_masks = masks.to(device)
    instances.scores = torch.rand(num_instances, generator=g).to(device)
    instances.pred_classes = torch.randint(0, 80, (num_instances,), generator=g).to(device)
    block = 64
    coarse = torch.randint(
        0, 10, (math.ceil(HEIGHT / block), math.ceil(WIDTH / block)), generator=g
    )
    semantic = coarse.repeat_interleave(block, 0)[:HEIGHT].repeat_interleave(block, 1)[:, :WIDTH]
    return instances, semantic.contiguous().to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for n in (10, 50, 100):
        instances, semantic = make_inputs(n, args.device)
        ref = combine_semantic_and_instance_outputs(instances, semantic, *THRESHOLDS)
        out = combine_panoptic(instances, semantic, *THRESHOLDS)
        assert torch.equal(ref[0], out[0]) and ref[1] == out[1], "outputs differ"
        t_ref = median_seconds(
            lambda: combine_semantic_and_instance_outputs(instances, semantic, *THRESHOLDS),
            args.repeats,
        )
        t_out = median_seconds(
            lambda: combine_panoptic(instances, semantic, *THRESHOLDS), args.repeats
        )
        rows.append((n, t_ref, t_out))
        print(
            f"{n:4d} instances: Detectron2 {t_ref * 1e3:8.1f} ms  plugin {t_out * 1e3:7.1f} ms"
            f"  speed-up {t_ref / t_out:5.1f}x",
            flush=True,
        )
    table = "\n".join(f"| {n} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.1f}x |" for n, a, b in rows)
    update_benchmarks_md(
        f"combiner-{args.device}",
        f"## Combiner, 800x1216, {args.device}\n\n"
        f"`{command_line()}` on {machine_description(args.device)}; median of {args.repeats}; "
        "outputs checked identical. Target: at least 20x at 100 instances.\n\n"
        "| instances | Detectron2 (ms) | plugin (ms) | speed-up |\n|---|---|---|---|\n" + table,
    )


if __name__ == "__main__":
    main()
