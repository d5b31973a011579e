"""The evaluators that ``train_net.py`` runs on a panoptic dataset, built from its metadata.

Detectron2's ``SemSegEvaluator`` reads one semantic label PNG per image (the records'
``sem_seg_file_name``); the plugin's records have only the panoptic PNG. It is therefore given a
*view* of the dataset, registered once under its own name, whose records carry
``sem_seg_file_name`` = the panoptic PNG and whose metadata names the semantic classes, plus a
loading function that derives the semantic labels from that PNG and the record's segments (the
loaders and records of the dataset itself are unchanged).
"""

import os
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator

from ..config import check_class_counts
from ..data.coco_panoptic import EVALUATOR_TYPE
from ..data.dataset_check import check_datasets
from ..data.dataset_mapper import semantic_from_panoptic
from ..logger import log_with_detectron2
from ..registration import register_dataset_once
from .panoptic_evaluator import PanopticQualityEvaluator

__all__ = [
    "SemanticFromPanoptic",
    "build_evaluator",
    "build_panoptic_fpn_evaluators",
    "evaluator_options",
    "panoptic_fpn_evaluators",
    "semantic_evaluation_dataset",
]


def _records_with_sem_seg_file_name(dataset_name: str) -> List[Dict[str, Any]]:
    """The dataset's records, each with "sem_seg_file_name" = its panoptic PNG."""
    return [
        dict(record, sem_seg_file_name=record["pan_seg_file_name"])
        for record in DatasetCatalog.get(dataset_name)
    ]


def _all_classes_metadata(metadata) -> Dict[str, Any]:
    """Semantic classes of a semantic-only model: stuff 0..S-1, then things S..S+T-1."""
    stuff = {k: v - 1 for k, v in metadata.stuff_dataset_id_to_contiguous_id.items() if v > 0}
    num_stuff = len(stuff)
    things = {k: num_stuff + v for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    return {
        "stuff_classes": list(metadata.stuff_classes[1:]) + list(metadata.thing_classes),
        "stuff_dataset_id_to_contiguous_id": {**stuff, **things},
    }


def semantic_evaluation_dataset(dataset_name: str, all_classes: bool = False) -> str:
    """Register (once) the view of a panoptic dataset that ``SemSegEvaluator`` evaluates.

    Args:
        dataset_name: a registered dataset of the plugin's format.
        all_classes: False for Panoptic FPN's semantic labels (0 = "things", stuff 1..S: the
            dataset's ``stuff_classes``); True for a semantic-only model's (stuff 0..S-1, then
            things S..S+T-1).
    Returns:
        the view's name: ``<dataset_name>_semantic_stuff_and_other`` or
        ``<dataset_name>_semantic_all_classes``. Its records are the dataset's with
        "sem_seg_file_name" = "pan_seg_file_name"; its metadata is the dataset's, with
        ``stuff_classes`` and ``stuff_dataset_id_to_contiguous_id`` of the chosen labels.
    """
    view = f"{dataset_name}_semantic_{'all_classes' if all_classes else 'stuff_and_other'}"
    metadata = MetadataCatalog.get(dataset_name)
    view_metadata = {k: v for k, v in metadata.as_dict().items() if k != "name"}
    if all_classes:
        view_metadata.update(_all_classes_metadata(metadata))
    register_dataset_once(
        view, partial(_records_with_sem_seg_file_name, dataset_name), view_metadata
    )
    return view


class SemanticFromPanoptic:
    """``sem_seg_loading_fn`` of ``SemSegEvaluator``: semantic labels from a panoptic PNG.

    Called with a record's panoptic PNG path, returns the labels of that record's segments
    (``semantic_from_panoptic``, which also checks the PNG against the record).
    """

    def __init__(self, dataset_name: str, ignore_label: int, num_stuff_classes: int = 0):
        """
        Args:
            dataset_name: the panoptic dataset.
            ignore_label: label of void pixels.
            num_stuff_classes: 0 for Panoptic FPN's labels (0 = "things", stuff 1..S); S for all
                classes (stuff 0..S-1, things S..S+T-1).
        """
        self._records = {r["pan_seg_file_name"]: r for r in DatasetCatalog.get(dataset_name)}
        self._ignore_label = ignore_label
        self._num_stuff_classes = num_stuff_classes

    def __call__(self, file_name: str, dtype=int) -> np.ndarray:
        """Labels (H, W) of the record whose panoptic PNG is ``file_name``, as ``dtype``."""
        record = self._records[file_name]
        labels = semantic_from_panoptic(record, self._ignore_label, self._num_stuff_classes)
        return labels.astype(dtype)


def build_panoptic_fpn_evaluators(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluators:
    """The evaluators of ``train_net.py`` for one test dataset: :func:`panoptic_fpn_evaluators`
    with the config's settings (:func:`evaluator_options`), after checking the model's class
    counts against the dataset.

    Args:
        cfg: the config.
        dataset_name: a registered dataset of the plugin's format.
        output_dir: where the evaluators write their files (``OUTPUT_DIR/inference`` when None,
            as Detectron2's trainers do).
    Returns:
        a ``DatasetEvaluators``.
    Raises:
        ValueError: a class count of the model differs from the dataset's
            (``check_class_counts``).
        PanopticDataError: the dataset has bad files (``PANOPTIC_FPN_EXT.DATA_CHECK``).
    """
    check_class_counts(cfg, dataset_name)
    check_datasets(cfg, [dataset_name])
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    return panoptic_fpn_evaluators(dataset_name, output_dir, **evaluator_options(cfg))


def evaluator_options(cfg: CfgNode) -> Dict[str, Any]:
    """The keyword arguments of :func:`panoptic_fpn_evaluators` that a config sets:
    ``PANOPTIC_FPN_EXT.SEMANTIC_TARGET``, ``MODEL.MASK_ON`` and ``PANOPTIC_FPN_EXT.EVAL.*``."""
    evaluation = cfg.PANOPTIC_FPN_EXT.EVAL
    return {
        "semantic_target": cfg.PANOPTIC_FPN_EXT.SEMANTIC_TARGET,
        "mask_on": cfg.MODEL.MASK_ON,
        "export_formats": list(evaluation.EXPORT_FORMATS),
        "instance_ap": evaluation.INSTANCE_AP,
        "semantic_miou": evaluation.SEMANTIC_MIOU,
        "num_threads": evaluation.NUM_THREADS,
    }


def panoptic_fpn_evaluators(
    dataset_name: str,
    output_dir: Optional[str] = None,
    *,
    semantic_target: str,
    mask_on: bool,
    export_formats: Sequence[str],
    instance_ap: bool,
    semantic_miou: bool,
    num_threads: int,
) -> DatasetEvaluators:
    """The evaluators of one test dataset, from plain arguments (what the LazyConfigs call).

    With ``semantic_target`` "stuff_and_other" (Panoptic FPN):

    * :class:`PanopticQualityEvaluator` (PQ/SQ/RQ), always; it exports the predictions in
      ``export_formats`` to ``output_dir``;
    * Detectron2's ``COCOEvaluator`` (box AP, and mask AP with ``mask_on``) when
      ``instance_ap`` is set and the metadata has an instances ``json_file``;
    * Detectron2's ``SemSegEvaluator`` (mIoU over "things" + the stuff classes) when
      ``semantic_miou`` is set.

    With "all_classes" (a semantic-only model, no panoptic or instance output): the
    ``SemSegEvaluator`` over all classes (stuff, then things) when ``semantic_miou`` is set.

    Args:
        dataset_name: a registered dataset of the plugin's format.
        output_dir: where the evaluators write their files (None: nowhere).
        semantic_target, mask_on, export_formats, instance_ap, semantic_miou, num_threads: the
            values of the config keys named in :func:`evaluator_options`.
    Returns:
        a ``DatasetEvaluators``. The plugin's log records (the per-class PQ table) go where
        Detectron2's go (:func:`~panoptic_fpn_ext.logger.log_with_detectron2`).
    """
    log_with_detectron2()
    metadata = MetadataCatalog.get(dataset_name)
    all_classes = semantic_target == "all_classes"
    evaluators = []
    if not all_classes:
        evaluators.append(
            PanopticQualityEvaluator(
                dataset_name,
                output_dir,
                export_formats=list(export_formats),
                num_threads=num_threads,
            )
        )
        if instance_ap and metadata.get("json_file") is not None:
            tasks = ("bbox", "segm") if mask_on else ("bbox",)
            evaluators.append(COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_dir))
    if semantic_miou:
        num_stuff = len(metadata.stuff_classes) - 1 if all_classes else 0
        loader = SemanticFromPanoptic(dataset_name, metadata.ignore_label, num_stuff)
        view = semantic_evaluation_dataset(dataset_name, all_classes)
        evaluators.append(SemSegEvaluator(view, output_dir=output_dir, sem_seg_loading_fn=loader))
    return DatasetEvaluators(evaluators)


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """``DefaultTrainer.build_evaluator`` for the plugin's datasets, by their ``evaluator_type``.

    Every dataset of the plugin's format (its built-in ones and those registered with
    ``register_coco_panoptic_dataset``) has ``evaluator_type`` "panoptic_fpn_ext"; for those this
    is :func:`build_panoptic_fpn_evaluators`. One line in a ``DefaultTrainer`` subclass::

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return panoptic_fpn_ext.build_evaluator(cfg, dataset_name, output_folder)

    Raises:
        ValueError: the dataset has another ``evaluator_type`` (an error rather than
            ``NotImplementedError``, which ``DefaultTrainer.test`` would log and skip).
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type != EVALUATOR_TYPE:
        raise ValueError(
            f"Dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; "
            f"panoptic_fpn_ext.build_evaluator evaluates datasets of type {EVALUATOR_TYPE!r} "
            f"(the plugin's datasets and register_coco_panoptic_dataset's)"
        )
    return build_panoptic_fpn_evaluators(cfg, dataset_name, output_folder)
