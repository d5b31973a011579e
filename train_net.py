#!/usr/bin/env python
"""Train and evaluate Panoptic FPN models with the panoptic_fpn_ext plugin.

Detectron2's usual entry point::

    python train_net.py --config-file configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml
    python train_net.py --config-file quick_start/panoptic_fpn_ext_R_18_shapes.yaml  # by name
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/or/url.pth
    python train_net.py --config-file CONFIG --eval-only --allow-random-weights  # baseline
    python train_net.py --config-file CONFIG --resume            # continue from OUTPUT_DIR
    python train_net.py --config-file CONFIG --resume-from OUTPUT_DIR/model_0004999.pth
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
Its weights are loaded before anything is written, and refused when they leave tensors of the
model unloaded (another architecture, other class counts) unless ``--allow-partial-weights``.

``--resume`` checks ``OUTPUT_DIR/last_checkpoint`` and the checkpoint it names before anything is
written; a damaged one is an error that names the newest checkpoint that loads, to pass to
``--resume-from``. ``--config-file`` takes a path or the name of one of the plugin's configs.
"""

import argparse
import json
import logging
import os

import yaml
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
from panoptic_fpn_ext.engine import (
    ALLOW_PARTIAL_FLAG,
    RESUME_FROM_FLAG,
    PanopticFPNExtTrainer,
    ResumeError,
    atomic_write,
    build_inference_model,
    checkpoint_problem,
    resolve_weights,
    resume_checkpoint,
)
from panoptic_fpn_ext.logger import PLUGIN_LOGGER, log_with_detectron2
from panoptic_fpn_ext.model_zoo import resolve_config_file

RANDOM_WEIGHTS_NAME = "random_weights"


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` + ``--allow-random-weights``,
    ``--allow-partial-weights`` and ``--resume-from``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="with --eval-only: evaluate a randomly initialised model when MODEL.WEIGHTS is "
        "empty (a baseline) instead of refusing",
    )
    parser.add_argument(
        ALLOW_PARTIAL_FLAG,
        action="store_true",
        help="with --eval-only: evaluate weights that leave tensors of the model unloaded "
        "(absent from the checkpoint or of another shape) instead of refusing",
    )
    parser.add_argument(
        RESUME_FROM_FLAG,
        default="",
        metavar="CHECKPOINT",
        help="resume from this checkpoint (weights, optimizer, LR schedule, iteration) instead "
        "of the one OUTPUT_DIR/last_checkpoint names, e.g. the one the error about a damaged "
        "last_checkpoint names",
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

    ``--resume-from``: that checkpoint. ``--resume`` with a ``last_checkpoint`` in
    ``OUTPUT_DIR``: the checkpoint it names, checked (:func:`resume_checkpoint`). Otherwise
    ``MODEL.WEIGHTS``, as Detectron2's ``resume_or_load``.

    Raises:
        ValueError: ``--eval-only`` with no weights and no ``--allow-random-weights``.
        WeightsNotFoundError: the weights file does not exist or the URL cannot be fetched.
        ResumeError: a damaged ``last_checkpoint`` or checkpoint to resume from.
    """
    resume_from = getattr(args, "resume_from", "")
    if resume_from:
        path = resolve_weights(resume_from, RESUME_FROM_FLAG)
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ResumeError(f"{RESUME_FROM_FLAG} {path} {problem}")
        return path
    if args.resume:
        checkpoint = resume_checkpoint(cfg.OUTPUT_DIR)
        if checkpoint:
            return checkpoint
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
    with open(path, encoding="utf-8") as f:
        return ((yaml.safe_load(f) or {}).get("MODEL") or {}).get("WEIGHTS", "")


def _same_weights(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return (a == b == "") or (bool(a) and bool(b) and os.path.abspath(a) == os.path.abspath(b))


def checked_config(args) -> CfgNode:
    """The validated, frozen config, with the weights checked, the datasets' files checked
    (``PANOPTIC_FPN_EXT.DATA_CHECK``) and, for ``--eval-only``, the weights and output folder
    chosen. Writes nothing."""
    cfg = build_config(args)
    weights = weights_to_load(cfg, args)
    datasets = cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST
    check_datasets(cfg, datasets)
    if args.eval_only:
        cfg.MODEL.WEIGHTS = weights  # the checkpoint --resume picked, recorded in config.yaml
        cfg.OUTPUT_DIR = eval_output_dir(cfg.OUTPUT_DIR, weights)
    cfg.freeze()
    return cfg


def start_logging(cfg: CfgNode, args) -> None:
    """Detectron2's ``default_setup`` (writes ``config.yaml`` and the log to OUTPUT_DIR), with
    the config's path (``default_setup`` reads ``args.config_file`` again: a config's name would
    fail there), and the plugin's logger sent where Detectron2's goes (the per-class PQ table)."""
    path = resolve_config_file(args.config_file)
    default_setup(cfg, argparse.Namespace(**dict(vars(args), config_file=path)))
    log_with_detectron2()


def setup(args) -> CfgNode:
    """:func:`checked_config`, then :func:`start_logging`: nothing is written before every
    check has passed."""
    cfg = checked_config(args)
    start_logging(cfg, args)
    return cfg


def save_results(cfg, results) -> None:
    """Write the final evaluation results to OUTPUT_DIR/eval_results.json (main process only)."""
    if results and comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
        atomic_write(path, lambda f: f.write(json.dumps(results, indent=2).encode()))


def main(args):
    cfg = checked_config(args)
    if args.eval_only:
        allow_partial = getattr(args, "allow_partial_weights", False)
        # the weights loaded and checked before anything is written
        model = build_inference_model(cfg, allow_partial=allow_partial)
        start_logging(cfg, args)
        if model.loaded_weights is not None:  # the summary, also in log.txt
            logging.getLogger(PLUGIN_LOGGER).info(model.loaded_weights.summary())
        results = PanopticFPNExtTrainer.test(cfg, model)
        verify_results(cfg, results)
    else:
        start_logging(cfg, args)
        trainer = PanopticFPNExtTrainer(cfg)
        trainer.resume_or_load(resume=args.resume, checkpoint=args.resume_from or None)
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
