"""Export a panoptic model as one self-contained ``torch.export`` artifact, with its runner.

    python -m panoptic_fpn_ext.tools.export --config-file CONFIG --output OUT_DIR \\
        [--format pt2] [--min-side N] [--max-side N] [KEY VALUE ...]  # e.g. MODEL.WEIGHTS w.pth

Writes ``OUT_DIR/model.pt2`` (the program from an image tensor to the panoptic map and segment
table, with its metadata inside; see README "Exporting and deploying") and
``OUT_DIR/run_panoptic.py``, a runner that needs only torch and torchvision. The program is
captured on ``MODEL.DEVICE`` and runs there. ``MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT`` is set to
"contiguous": the exported program computes in Detectron2's layout, in which its outputs equal the
eager model's exactly.
"""

import argparse
import os
import shutil
from typing import List, Optional

from detectron2.modeling import build_model

from ..deploy import artifact_metadata, export_panoptic_model, save_artifact
from ..deploy.export import smallest_exportable_side
from ..engine.weights import ALLOW_PARTIAL_FLAG, load_inference_weights
from .predict import build_cfg

FORMATS = ("pt2",)
RUNNER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "deploy", "run_panoptic.py")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="folder for model.pt2 and the runner")
    parser.add_argument(
        "--format",
        default="pt2",
        choices=FORMATS,
        help="pt2: torch.export ExportedProgram (torch.export.save)",
    )
    parser.add_argument(
        "--min-side", type=int, default=None, help="smallest image side (default: the smallest "
        "the backbone allows)"
    )
    parser.add_argument(
        "--max-side", type=int, default=None, help="largest image side (default: "
        "max(INPUT.MAX_SIZE_TEST, INPUT.MIN_SIZE_TEST))"
    )
    parser.add_argument(
        ALLOW_PARTIAL_FLAG,
        dest="allow_partial",
        action="store_true",
        help="export weights that leave tensors of the model unloaded (refused otherwise)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    """Export; returns the artifact's path."""
    args = parse_args(argv)
    layout = ["MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", "contiguous"]
    cfg = build_cfg(args.config_file, args.opts + layout)
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg.MODEL.WEIGHTS, allow_partial=args.allow_partial)
    min_side = args.min_side or smallest_exportable_side(model)
    max_side = args.max_side or max(cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    program = export_panoptic_model(model, min_side, max_side)
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "model.pt2")
    save_artifact(program, artifact_metadata(cfg, min_side, max_side), path)
    shutil.copyfile(RUNNER, os.path.join(args.output, "run_panoptic.py"))
    print(f"Wrote {path} and {os.path.join(args.output, 'run_panoptic.py')}")
    return path


if __name__ == "__main__":
    main()
