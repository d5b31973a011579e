"""Export a panoptic model as one self-contained ``torch.export`` artifact, with its runner.

    python -m panoptic_fpn_ext.tools.export --config-file CONFIG --output OUT_DIR \\
        [--max-side N] [--dataset NAME] [--import MODULE] [--opts KEY VALUE ...]

Writes ``OUT_DIR/model.pt2`` (the program from an image tensor to the panoptic map and segment
table, with its metadata inside; see README "Exporting and deploying"), ``OUT_DIR/model.graph``
(the same program as generated code and tensors, which the runner loads in well under a second
where ``torch.export.load`` takes ~15-20 s; checked to give the same outputs) and
``OUT_DIR/run_panoptic.py``, a runner that needs only torch, torchvision, numpy and Pillow. The
program is captured on ``MODEL.DEVICE`` and runs there. ``MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT``
is set to "contiguous": the exported program computes in Detectron2's layout, in which its
outputs equal the eager model's exactly. ``--dataset``, ``--import`` and ``--opts`` are the
predict tool's: a model trained on a user's own dataset is exported with ``--import`` of the
module that registers it and ``--dataset`` naming it (its categories go into the artifact).
"""

import argparse
import os
import shutil
from typing import List, Optional

from detectron2.utils.logger import setup_logger

from ..deploy import (
    artifact_metadata,
    check_graph_program,
    example_inputs,
    export_panoptic_model,
    save_artifact,
    save_graph_program,
)
from ..engine.weights import build_inference_model
from .common import (
    add_config_arguments,
    build_cfg,
    check_weights,
    import_user_modules,
    parse_arguments,
)

FORMATS = ("pt2", "graph")
FILE_NAMES = {"pt2": "model.pt2", "graph": "model.graph"}
RUNNER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "deploy", "run_panoptic.py")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m panoptic_fpn_ext.tools.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, help="folder for model.pt2 and the runner")
    parser.add_argument(
        "--format",
        nargs="+",
        default=list(FORMATS),
        choices=FORMATS,
        help="pt2: torch.export ExportedProgram (torch.export.save); graph: its code and "
        "tensors, for the runner (default: both)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="largest image side the program takes (default: max(INPUT.MAX_SIZE_TEST, "
        "INPUT.MIN_SIZE_TEST)); the runner resizes larger images down to it",
    )
    add_config_arguments(parser)
    return parse_arguments(parser, argv)


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Export; returns the artifacts' paths. Every check (config, dataset, weights) runs before
    anything is written."""
    args = parse_args(argv)
    setup_logger(name="panoptic_fpn_ext")
    import_user_modules(args.imports)
    layout = ["MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", "contiguous"]
    cfg = build_cfg(args.config_file, args.opts + layout, args.dataset)
    check_weights(cfg)
    model = build_inference_model(cfg, allow_partial=args.allow_partial)
    max_side = args.max_side or max(cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    program = export_panoptic_model(model, max_side)
    metadata = artifact_metadata(cfg, model, max_side)
    os.makedirs(args.output, exist_ok=True)
    paths = [os.path.join(args.output, FILE_NAMES[name]) for name in args.format]
    for name, path in zip(args.format, paths):
        if name == "pt2":
            save_artifact(program, metadata, path)
        else:
            save_graph_program(program, metadata, path)
            check_graph_program(path, program, example_inputs(model, max_side))
    runner = os.path.join(args.output, "run_panoptic.py")
    shutil.copyfile(RUNNER, runner)
    print(f"Wrote {', '.join(paths)} and {runner}")
    return paths

if __name__ == "__main__":
    main()
