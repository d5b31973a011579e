"""The plugin's DefaultTrainer: panoptic mapper and evaluators, atomic checkpoints, exact resume."""

import logging
import math
import re
import weakref
from typing import Dict, Optional

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import PanopticDatasetMapper
from ..evaluation import build_evaluator
from .checkpoint import AtomicDetectionCheckpointer
from .resume import resume_checkpoint
from .sampler import ResumableTrainingSampler

__all__ = ["PanopticFPNExtTrainer", "loss_terms_of"]

# A loss term above this (finite) is reported in a divergence message as the start of it.
HUGE_LOSS = 1e6


class PanopticFPNExtTrainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with the plugin's data mapper, evaluators and checkpointer.

    Additions over Detectron2's behaviour:

    * checkpoints and the ``last_checkpoint`` tag are written atomically, so a run killed at any
      moment resumes from the last complete checkpoint;
    * the data order is saved with the checkpoint and continued by ``--resume``
      (:class:`ResumableTrainingSampler`);
    * a non-finite loss stops training, before the optimizer step, with an error naming the
      iteration, every loss term and its value, the last checkpoint written (and whether its
      weights are finite), and, when loss terms went above ``HUGE_LOSS`` earlier, the last
      checkpoint written before that.

    * several CPU processes (``MODEL.DEVICE cpu`` with ``--num-gpus N``) train over Gloo:
      Detectron2's ``DefaultTrainer`` always gives DistributedDataParallel ``device_ids=[rank]``,
      which DDP rejects for a model on the CPU.

    Everything else (AMP via ``SOLVER.AMP.ENABLED``, DDP, LR schedule, TensorBoard/JSON writers,
    periodic checkpoints, evaluation hooks) is Detectron2's.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with the two differences above (DDP device_ids, checkpointer);
        # it cannot be called itself because it wraps the model in DDP before any override runs.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, **_ddp_device_kwargs(cfg))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.checkpointer.add_checkpointable("train_sampler", data_loader.resumable_sampler)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self._first_huge_loss = None  # (iteration, {term: value}) of this run, see run_step
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True, checkpoint: Optional[str] = None) -> None:
        """Detectron2's ``resume_or_load``, with the checkpoint to resume from checked first.

        Args:
            resume: continue from the checkpoint ``OUTPUT_DIR/last_checkpoint`` names (checked by
                :func:`resume_checkpoint`) when there is one; else load ``MODEL.WEIGHTS``.
            checkpoint: continue from this checkpoint instead (``train_net.py --resume-from``),
                e.g. the one a damaged ``last_checkpoint``'s error names.
        Raises:
            ResumeError: ``last_checkpoint`` or the checkpoint it names is damaged; nothing was
                loaded.
        """
        if checkpoint is None and resume:
            checkpoint = resume_checkpoint(self.cfg.OUTPUT_DIR)
        if checkpoint:
            self.checkpointer.load(checkpoint)  # the model and every checkpointable
            self.start_iter = self.iter + 1  # the checkpoint holds the last iteration done
        else:
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[])
        self._trainer.data_loader.resumable_sampler.skip(
            self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
        )

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as e:
            raise FloatingPointError(self._divergence_message(e)) from e
        self._record_loss_peak()

    def _record_loss_peak(self) -> None:
        """Remember the first iteration whose largest loss term exceeded ``HUGE_LOSS``."""
        if self._first_huge_loss is not None:
            return
        terms = {k: v for k, (v, _) in self.storage.latest().items() if k.startswith("loss_")}
        huge = {k: v for k, v in terms.items() if abs(v) > HUGE_LOSS}
        if huge:
            self._first_huge_loss = (self.iter, huge)

    def _divergence_message(self, error: FloatingPointError) -> str:
        """Every loss term of the diverged iteration, and what the checkpoints written hold."""
        terms = loss_terms_of(str(error))
        bad = [f"{k} ({v})" for k, v in terms.items() if not math.isfinite(v)]
        other = [f"{k} {v:.3g}" for k, v in terms.items() if math.isfinite(v)]
        lines = [
            f"Training diverged at iteration {self.iter}: non-finite loss term(s) "
            f"{', '.join(bad) or '(total)'}; the other terms: {', '.join(other) or 'none'}. "
            "Stopped before the optimizer step."
        ]
        saved = self.checkpointer.saved
        if not saved:
            lines.append(f"This run wrote no checkpoint to {self.cfg.OUTPUT_DIR}.")
        else:
            last = saved[-1]
            lines.append(
                f"Last checkpoint of this run: {last.path} (iteration {last.iteration}), "
                f"weights {'all finite' if last.weights_finite else 'NOT all finite'}."
            )
        if self._first_huge_loss is not None:
            at, huge = self._first_huge_loss
            before = [c for c in saved if c.iteration is not None and c.iteration < at]
            lines.append(
                f"Loss terms above {HUGE_LOSS:.0e} first at iteration {at} "
                f"({', '.join(f'{k} {v:.3g}' for k, v in huge.items())}): checkpoints from "
                f"then on may hold diverging weights; the last one written before it: "
                f"{before[-1].path if before else 'none in this run'}."
            )
        lines.append(f"Detectron2 reported: {error}")
        return "\n".join(lines)

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        seed = cfg.SEED if cfg.SEED >= 0 else None  # None: a random seed shared by all ranks
        sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        loader = build_detection_train_loader(
            cfg,
            dataset=dataset,
            sampler=sampler,
            mapper=PanopticDatasetMapper(cfg, is_train=True),
            **_prefetch_kwargs(cfg),
        )
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = PanopticDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def loss_terms_of(message: str) -> Dict[str, float]:
    """The ``loss_dict`` of Detectron2's "Loss became infinite or NaN" message, as floats.

    Reads ``'name': value`` pairs whatever numpy's repr (``nan``, ``np.float64(inf)``,
    ``1e+37``); an empty dict when the message has none.
    """
    _, _, loss_dict = message.partition("loss_dict =")
    pairs = re.findall(r"'(\w+)': (?:np\.float\d+\()?([-+\w.]+)", loss_dict)
    terms = {}
    for name, value in pairs:
        try:
            terms[name] = float(value)
        except ValueError:
            continue
    return terms


def _prefetch_kwargs(cfg) -> dict:
    """The DataLoader's ``prefetch_factor``: enough for the workers to hold two batches ready.

    With aspect-ratio grouping (Detectron2's default) the workers yield single images, and the
    DataLoader's default (2 per worker) lets one worker prepare only 2 images ahead: with a batch
    of 4 (the quick start) every iteration then waits for the other 2 to be read and mapped.
    """
    num_workers = cfg.DATALOADER.NUM_WORKERS
    if num_workers == 0:
        return {}
    per_process = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    items_per_batch = per_process if cfg.DATALOADER.ASPECT_RATIO_GROUPING else 1
    return {"prefetch_factor": max(2, -(-2 * items_per_batch // num_workers))}


def _ddp_device_kwargs(cfg) -> dict:
    """DDP's ``device_ids``: Detectron2's default (this process's GPU), or none for a CPU model."""
    return {"device_ids": None} if cfg.MODEL.DEVICE == "cpu" else {}
