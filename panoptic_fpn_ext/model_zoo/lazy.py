"""What the plugin's LazyConfigs call that has no YAML-route counterpart.

A LazyConfig's model has no config: its class counts are ``model.sem_seg_head.num_classes`` and
``model.roi_heads.num_classes``, which the LazyConfigs hand to :func:`checked_dataset_dicts` by
interpolation (``"${model.sem_seg_head.num_classes}"``). The datasets of the training and test
loaders are thus checked against the model when Detectron2's ``lazyconfig_train_net.py``
instantiates the loaders, before the first iteration and before any evaluation.
"""

from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import get_detection_dataset_dicts

from ..config import check_num_classes
from ..data.dataset_check import check_dataset_files

__all__ = ["checked_dataset_dicts"]


def checked_dataset_dicts(
    names: Union[str, Sequence[str]],
    *,
    sem_seg_num_classes: Optional[int] = None,
    roi_heads_num_classes: Optional[int] = None,
    semantic_target: str = "stuff_and_other",
    filter_empty: bool = False,
    data_check: str = "full",
) -> List[Dict]:
    """Detectron2's ``get_detection_dataset_dicts``, after checking the model's class counts
    against every dataset's metadata (``check_num_classes``) and the datasets' files
    (``check_dataset_files``).

    Args:
        names: registered datasets.
        sem_seg_num_classes: the model's ``sem_seg_head.num_classes`` (None: no semantic head).
        roi_heads_num_classes: the model's ``roi_heads.num_classes`` (None: no RoI heads).
        semantic_target: "stuff_and_other" (Panoptic FPN) or "all_classes" (semantic-only).
        filter_empty: as ``get_detection_dataset_dicts``.
        data_check: "full", "headers" or "off", as ``PANOPTIC_FPN_EXT.DATA_CHECK``.
    Returns:
        the records of all datasets, as ``get_detection_dataset_dicts`` returns them.
    Raises:
        ValueError: a class count differs from a dataset's; names the LazyConfig key, its value,
            the dataset and the value it needs.
        PanopticDataError: a dataset has bad files (all listed, the dataset named).
    """
    for name in [names] if isinstance(names, str) else names:
        check_num_classes(
            name,
            _setting("model.sem_seg_head.num_classes", sem_seg_num_classes),
            _setting("model.roi_heads.num_classes", roi_heads_num_classes),
            semantic_target,
        )
    check_dataset_files([names] if isinstance(names, str) else names, data_check)
    return get_detection_dataset_dicts(names, filter_empty=filter_empty)


def _setting(key: str, value: Optional[int]):
    return None if value is None else (key, value)
