"""The plugin's DefaultTrainer: panoptic mapper, panoptic evaluators, atomic checkpoints."""
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer

from ..data import PanopticDatasetMapper
from ..evaluation import build_panoptic_fpn_evaluators
from .checkpoint import AtomicDetectionCheckpointer

__all__ = ["PanopticFPNExtTrainer"]


class PanopticFPNExtTrainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with the plugin's data mapper, evaluators and checkpointer.

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
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=PanopticDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = PanopticDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_panoptic_fpn_evaluators(cfg, dataset_name, output_folder)
