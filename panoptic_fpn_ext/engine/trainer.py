"""The plugin's DefaultTrainer: panoptic mapper and evaluators, atomic checkpoints, exact resume."""

import re

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer

from ..data import PanopticDatasetMapper
from ..evaluation import build_panoptic_fpn_evaluators
from .checkpoint import AtomicDetectionCheckpointer
from .sampler import ResumableTrainingSampler

__all__ = ["PanopticFPNExtTrainer"]


class PanopticFPNExtTrainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with the plugin's data mapper, evaluators and checkpointer.

    Additions over Detectron2's behaviour:

    * checkpoints and the ``last_checkpoint`` tag are written atomically, so a run killed at any
      moment resumes from the last complete checkpoint;
    * the data order is saved with the checkpoint and continued by ``--resume``
      (:class:`ResumableTrainingSampler`);
    * a non-finite loss stops training with an error naming the iteration and the loss terms,
      raised before the optimizer step, so no checkpoint ever holds the diverged weights.

    Everything else (AMP via ``SOLVER.AMP.ENABLED``, DDP, LR schedule, TensorBoard/JSON writers,
    periodic checkpoints, evaluation hooks) is Detectron2's.
    """

    def build_hooks(self):
        # DefaultTrainer.__init__ builds its checkpointer just before the hooks; swap in the atomic
        # one here so that the PeriodicCheckpointer hook and resume_or_load both use it.
        old = self.checkpointer
        self.checkpointer = AtomicDetectionCheckpointer(
            old.model, old.save_dir, **old.checkpointables
        )
        self.checkpointer.add_checkpointable(
            "train_sampler", self._trainer.data_loader.resumable_sampler
        )
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        self._trainer.data_loader.resumable_sampler.skip(
            self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
        )

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as e:
            terms = re.findall(r"'(\w+)': [^,}]*(?:nan|inf)", str(e)) or ["(total)"]
            raise FloatingPointError(
                f"Training diverged at iteration {self.iter}: non-finite loss term(s) "
                f"{', '.join(terms)}. Stopped before the optimizer step; the last checkpoint in "
                f"{self.cfg.OUTPUT_DIR} is unaffected. Detectron2 reported: {e}"
            ) from e

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
        )
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = PanopticDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_panoptic_fpn_evaluators(cfg, dataset_name, output_folder)
