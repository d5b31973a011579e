#!/usr/bin/env python
"""Train and evaluate Panoptic FPN models with the panoptic_fpn_ext plugin.

Detectron2's usual entry point::

    python train_net.py --config-file configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml
    python train_net.py --config-file quick_start/panoptic_fpn_ext_R_18_shapes.yaml  # by name
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/or/url.pth
    python train_net.py --config-file CONFIG --eval-only --allow-random-weights  # baseline
    python train_net.py --config-file CONFIG --resume            # continue from OUTPUT_DIR
    python train_net.py --config-file CONFIG --num-gpus 8        # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                # several machines

``MODEL.DEVICE cpu`` with ``--num-gpus N`` runs N CPU processes that talk over Gloo.

The weights are resolved before anything is written (a missing file or an unreachable URL is an
error naming ``MODEL.WEIGHTS``). ``--eval-only`` refuses an empty ``MODEL.WEIGHTS`` unless
``--allow-random-weights`` is given, and writes its files (``config.yaml``, log,
``eval_results.json``, ``inference/``) to ``OUTPUT_DIR/eval_<weights file stem>/``
(``eval_random_weights/`` for random weights), never over a training run's files in
``OUTPUT_DIR``; it refuses a folder that holds the evaluation of other weights of the same name.
"""

import argparse
import json
import logging
import os

import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from panoptic_fpn_ext import (
    add_panoptic_fpn_ext_config,
    check_datasets,
    merge_config_file,
    merge_config_list,
    validate_config,
)
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer, atomic_write, resolve_weights
from panoptic_fpn_ext.model_zoo import resolve_config_file

RANDOM_WEIGHTS_NAME = "random_weights"


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` + ``--allow-random-weights``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="with --eval-only: evaluate a randomly initialised model when MODEL.WEIGHTS is "
        "empty (a baseline) instead of refusing",
    )
    return parser


def build_config(args) -> CfgNode:
    """Detectron2's defaults + the plugin's keys + the YAML + command-line overrides, validated.

    Writes nothing; every error names the file or key at fault.
    """
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, resolve_config_file(args.config_file))  # a path, or a config's name
    merge_config_list(cfg, args.opts)
    validate_config(cfg)
    return cfg


def weights_to_load(cfg: CfgNode, args) -> str:
    """The checkpoint the run starts from, checked to exist (URLs downloaded), or "" for none.

    As Detectron2's ``resume_or_load``: with ``--resume`` and a ``last_checkpoint`` in
    ``OUTPUT_DIR``, that checkpoint; otherwise ``MODEL.WEIGHTS``.

    Raises:
        ValueError: ``--eval-only`` with no weights and no ``--allow-random-weights``.
        WeightsNotFoundError: the weights file does not exist or the URL cannot be fetched.
    """
    if args.resume:
        checkpointer = DetectionCheckpointer(torch.nn.Module(), save_dir=cfg.OUTPUT_DIR)
        if checkpointer.has_checkpoint():
            tag = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
            return resolve_weights(checkpointer.get_checkpoint_file(), f"--resume: {tag}")
    if cfg.MODEL.WEIGHTS:
        resolve_weights(cfg.MODEL.WEIGHTS)
    elif args.eval_only and not getattr(args, "allow_random_weights", False):
        raise ValueError(
            "--eval-only with config key MODEL.WEIGHTS empty would evaluate a randomly "
            "initialised model; set MODEL.WEIGHTS to a checkpoint path or URL, or pass "
            "--allow-random-weights for a random-weights baseline"
        )
    return cfg.MODEL.WEIGHTS


def eval_output_dir(output_dir: str, weights: str) -> str:
    """Where an ``--eval-only`` run writes: ``output_dir/eval_<weights file stem>``.

    Raises:
        ValueError: that folder holds the evaluation of different weights (its config.yaml
            names another MODEL.WEIGHTS), which would be replaced.
    """
    stem = os.path.splitext(os.path.basename(weights))[0] if weights else RANDOM_WEIGHTS_NAME
    folder = os.path.join(output_dir, f"eval_{stem}")
    previous = _evaluated_weights(folder)
    if previous is not None and _same_weights(previous, weights):
        logging.getLogger(__name__).warning(
            f"Replacing the earlier evaluation of {weights or 'random weights'} in {folder}"
        )
    elif previous is not None:
        raise ValueError(
            f"{folder} holds the evaluation of MODEL.WEIGHTS {previous!r}, not {weights!r}; "
            f"set OUTPUT_DIR to another folder to keep both"
        )
    return folder


def _evaluated_weights(folder: str):
    """MODEL.WEIGHTS recorded in ``folder/config.yaml``, or None when there is none."""
    path = os.path.join(folder, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return ((yaml.safe_load(f) or {}).get("MODEL") or {}).get("WEIGHTS", "")


def _same_weights(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return (a == b == "") or (bool(a) and bool(b) and os.path.abspath(a) == os.path.abspath(b))


def setup(args) -> CfgNode:
    """The validated config, with the weights checked, the datasets' files checked
    (``PANOPTIC_FPN_EXT.DATA_CHECK``) and the output folder chosen, then Detectron2's
    ``default_setup`` (which writes ``config.yaml`` and the log to OUTPUT_DIR).

    Nothing is written before every check has passed.
    """
    cfg = build_config(args)
    weights = weights_to_load(cfg, args)
    datasets = cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST
    check_datasets(cfg, datasets)
    if args.eval_only:
        cfg.MODEL.WEIGHTS = weights  # the checkpoint --resume picked, recorded in config.yaml
        cfg.OUTPUT_DIR = eval_output_dir(cfg.OUTPUT_DIR, weights)
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
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # chosen by setup()
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
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
