#!/usr/bin/env python
"""Train and evaluate Panoptic FPN models with the panoptic_fpn_ext plugin.

Detectron2's usual entry point::

    python train_net.py --config-file configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml
    python train_net.py --config-file quick_start/panoptic_fpn_ext_R_18_shapes.yaml  # by name
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/or/url.pth
    python train_net.py --config-file CONFIG --resume            # continue from OUTPUT_DIR
    python train_net.py --config-file CONFIG --num-gpus 8        # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                # several machines

``MODEL.DEVICE cpu`` with ``--num-gpus N`` runs N CPU processes that talk over Gloo.
"""

import json
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.utils import comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file, validate_config
from panoptic_fpn_ext.model_zoo import resolve_config_file
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer, atomic_write


def setup(args):
    """Config from Detectron2's defaults + the plugin's keys + the YAML + command-line overrides."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, resolve_config_file(args.config_file))  # a path, or a config's name
    cfg.merge_from_list(args.opts)
    validate_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def save_results(cfg, results) -> None:
    """Write the final evaluation results to OUTPUT_DIR/eval_results.json (main process only)."""
    if results and comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
        atomic_write(path, lambda f: f.write(json.dumps(results, indent=2).encode()))


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = PanopticFPNExtTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = PanopticFPNExtTrainer.test(cfg, model)
        verify_results(cfg, results)
    else:
        trainer = PanopticFPNExtTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train() returns results only when TEST.EXPECTED_RESULTS is set; the
        # EvalHook keeps the last evaluation (always run after the final iteration) here.
        results = getattr(trainer, "_last_eval_results", None)
    save_results(cfg, results)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
