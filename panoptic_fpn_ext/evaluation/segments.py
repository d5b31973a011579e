"""The segments of a panoptic image: ``segments_info`` validated into tensors, and checked
against the id map's pixels.

Errors name the image, the side (ground truth or prediction) and the offending ids or categories.
"""

from typing import Mapping, NamedTuple, Sequence, Type, Union

import numpy as np
import torch

from ..data.panoptic_io import VOID_ID, PanopticDataError
from .id_index import MAX_SEGMENT_ID, GroundTruth, ground_truth_ids
from .jit import jit

__all__ = [
    "PanopticPredictionError",
    "Segments",
    "check_segment_ids",
    "host_array",
    "segments_from_info",
]

# Number of offending ids listed in an error message.
_MAX_LISTED = 10


class PanopticPredictionError(ValueError):
    """A panoptic prediction is malformed: unknown category, id map and segments_info disagree."""


class Segments(NamedTuple):
    """The segments of one panoptic id map, in ``segments_info`` order (CPU tensors).

    Attributes:
        ids: int64 (K,), distinct segment ids in [1, MAX_SEGMENT_ID].
        categories: int64 (K,), category index of each segment in [0, C).
        iscrowd: bool (K,), crowd flag (always False for predictions).
    """

    ids: torch.Tensor
    categories: torch.Tensor
    iscrowd: torch.Tensor


def _listed(values: Sequence) -> str:
    values = list(values)
    more = f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else ""
    return f"{values[:_MAX_LISTED]}{more}"


def _segment_table(segments_info: Sequence[Mapping], describe: str, error: Type[ValueError]):
    """int64 (K, 4): (id, isthing, category_id, iscrowd) of each segment of a segments_info
    list."""
    try:
        rows = [
            (s["id"], bool(s["isthing"]), s["category_id"], s.get("iscrowd", 0))
            for s in segments_info
        ]
    except (KeyError, TypeError) as e:
        raise error(
            f"{describe}: a segment of segments_info lacks {e}; each needs 'id', 'category_id' "
            "and 'isthing'"
        ) from e
    table = np.array(rows) if rows else np.zeros((0, 4), dtype=np.int64)
    if table.dtype.kind not in "iub":
        raise error(
            f"{describe}: segments_info holds non-integer values ({table.dtype}) in 'id', "
            "'category_id' or 'iscrowd'"
        )
    return table.astype(np.int64, copy=False)


@jit(release_gil=False)
def _contiguous_categories(table, num_things, num_stuff, categories):
    """Each segment's category index into ``categories`` (int64 (K,)): thing t is t, stuff s is
    T + s - 1. ``table`` is int64 (K, 4) of :func:`_segment_table`. Returns False when an id is
    out of [1, MAX_SEGMENT_ID] or repeats, or a category is unknown (the caller then finds which,
    see :func:`_check_ids`, :func:`_check_categories`)."""
    valid = True
    for k in range(table.shape[0]):
        segment_id, isthing, category = table[k, 0], table[k, 1], table[k, 2]
        valid &= VOID_ID < segment_id <= MAX_SEGMENT_ID
        if isthing:
            valid &= 0 <= category < num_things
            categories[k] = category
        else:
            valid &= 1 <= category <= num_stuff
            categories[k] = num_things + category - 1
    ids = np.sort(table[:, 0])
    for k in range(1, len(ids)):
        valid &= ids[k] != ids[k - 1]
    return valid


def _check_ids(ids: np.ndarray, describe: str, error: Type[ValueError]) -> None:
    bad = ids[(ids <= VOID_ID) | (ids > MAX_SEGMENT_ID)]
    if len(bad):
        raise error(
            f"{describe}: segment id(s) {_listed(bad.tolist())} out of range; expected 1 to "
            f"{MAX_SEGMENT_ID} (0 is void)"
        )
    if len(set(ids.tolist())) == len(ids):
        return
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise error(f"{describe}: segment id(s) {_listed(unique[counts > 1].tolist())} repeat")


def _check_categories(
    ids: np.ndarray,
    isthing: np.ndarray,
    category_id: np.ndarray,
    num_things: int,
    num_stuff: int,
    describe: str,
    error: Type[ValueError],
) -> None:
    bad_thing = isthing & ((category_id < 0) | (category_id >= num_things))
    bad_stuff = ~isthing & ((category_id < 1) | (category_id > num_stuff))
    if bad_thing.any() or bad_stuff.any():
        things = [f"{i}: thing {c}" for i, c in zip(ids[bad_thing], category_id[bad_thing])]
        stuff = [f"{i}: stuff {c}" for i, c in zip(ids[bad_stuff], category_id[bad_stuff])]
        raise error(
            f"{describe}: unknown category for segment(s) {_listed(things + stuff)}; expected "
            f"contiguous thing ids 0..{num_things - 1} or stuff ids 1..{num_stuff} (stuff 0 is "
            "the semantic 'things' label, not a category)"
        )


def segments_from_info(
    segments_info: Sequence[Mapping],
    num_things: int,
    num_stuff: int,
    describe: str,
    error: Type[ValueError] = PanopticPredictionError,
) -> Segments:
    """Validate a ``segments_info`` list and turn it into tensors.

    Args:
        segments_info: dicts with "id", "category_id" (contiguous: thing 0..T-1, stuff 1..S),
            "isthing" and optionally "iscrowd" (0/1).
        num_things, num_stuff: T and S.
        describe: names the image and the side (GT or prediction) in error messages.
        error: exception type raised for invalid segments.
    Returns:
        the segments, as CPU tensors.
    Raises:
        error: a segment lacks a key, an id is out of [1, MAX_SEGMENT_ID] or repeats, or a
            category is unknown.
    """
    table = _segment_table(segments_info, describe, error)
    categories = np.empty(len(table), dtype=np.int64)
    if not _contiguous_categories(table, num_things, num_stuff, categories):
        ids, isthing, category_id = table[:, 0], table[:, 1].astype(bool), table[:, 2]
        _check_ids(ids, describe, error)
        _check_categories(ids, isthing, category_id, num_things, num_stuff, describe, error)
    ids, iscrowd = np.ascontiguousarray(table[:, 0]), table[:, 3].astype(bool)
    return Segments(torch.from_numpy(ids), torch.from_numpy(categories), torch.from_numpy(iscrowd))


def _unlisted_ids(id_map: torch.Tensor, segment_ids: torch.Tensor) -> list:
    present = torch.unique(id_map).cpu()
    keep = ~torch.isin(present, segment_ids.cpu()) & (present != VOID_ID)
    return present[keep].tolist()


def _absent_ids(areas: np.ndarray, segment_ids: torch.Tensor) -> list:
    return segment_ids.cpu().numpy()[areas == 0].tolist()


def check_segment_ids(
    histogram: Union[torch.Tensor, np.ndarray],
    gt_id_map: GroundTruth,
    gt_ids: torch.Tensor,
    pred_id_map: torch.Tensor,
    pred_ids: torch.Tensor,
    describe: str,
) -> None:
    """Check that each id map holds exactly the ids of its ``segments_info`` (plus void).

    One device-to-host transfer (of the histogram); the offending ids are only looked up on
    error.

    Args:
        histogram: int64 (Kg + 2, Kp + 2), the joint histogram of the two maps (see
            :mod:`.counting`): a tensor on any device, or its values as a numpy array.
        gt_id_map, pred_id_map: the id maps (H, W) (the GT's may be RGBA pixels or a PNG, see
            :data:`.id_index.GroundTruth`).
        gt_ids, pred_ids: int64 (Kg,), (Kp,), the ids listed in ``segments_info``.
        describe: names the image in error messages.
    Raises:
        PanopticDataError: the GT map has an unlisted id, or a listed GT id has no pixel.
        PanopticPredictionError: the same for the prediction.
    """
    counts = host_array(histogram)
    gt_areas = counts[1:-1].sum(1)
    pred_areas = counts[:, 1:-1].sum(0)
    flags = [
        counts[-1].any(),
        (gt_areas == 0).any(),
        counts[:, -1].any(),
        (pred_areas == 0).any(),
    ]
    if not any(flags):
        return
    gt_id_map = ground_truth_ids(gt_id_map)
    for side, (unlisted, absent), id_map, ids, areas, error in (
        ("ground truth", flags[:2], gt_id_map, gt_ids, gt_areas, PanopticDataError),
        ("prediction", flags[2:], pred_id_map, pred_ids, pred_areas, PanopticPredictionError),
    ):
        if unlisted or absent:
            extra = _unlisted_ids(id_map, ids) if unlisted else []
            missing = _absent_ids(areas, ids) if absent else []
            raise error(
                f"{describe}: the {side} id map and its segments_info disagree: ids in the map "
                f"but not in segments_info: {_listed(extra)}; ids in segments_info but not in "
                f"the map: {_listed(missing)}"
            )


def host_array(histogram: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """A histogram's values as a numpy array (copied to the host from a device)."""
    return histogram.cpu().numpy() if isinstance(histogram, torch.Tensor) else histogram
