"""Panoptic quality (PQ): per-image statistics on tensors, per-category accumulation, metrics.

The definition is the reference one (Kirillov et al., "Panoptic Segmentation", CVPR 2019), as
implemented by panopticapi's ``pq_compute`` and cityscapesscripts' ``evalPanopticSemanticLabeling``
(the same algorithm), rule for rule:

* a ground-truth (GT) and a predicted segment match when they have the same category and
  IoU > 0.5, where the union leaves out the predicted segment's pixels on GT void;
  a match is a true positive (TP) and adds its IoU to its category's IoU sum;
* an unmatched, non-crowd GT segment is a false negative (FN); crowd GT segments never match and
  are never FN;
* an unmatched predicted segment is a false positive (FP) unless more than half of its pixels lie
  on GT void plus the crowd segment of its own category. When an image has several crowd segments
  of one category, that is the last of them in the GT's ``segments_info`` order, as in the
  reference;
* per category ``PQ = IoU sum / (TP + FP/2 + FN/2)``, ``SQ = IoU sum / TP`` (0 without TP),
  ``RQ = TP / (TP + FP/2 + FN/2)``; the All/Things/Stuff figures are means over the categories
  that have at least one GT or predicted segment (TP + FP + FN > 0).

Since IoU > 0.5 pairs are unique on both sides, every statistic of an image follows from one joint
histogram of (GT segment, predicted segment) pixel counts.

Categories: the plugin's contiguous ids are per kind (things 0..T-1; stuff 1..S, 0 being the
semantic "things" label). Here both kinds share one axis, the *category index*: thing ``c`` is
``c``, stuff ``s`` is ``T + s - 1``; ``C = T + S``.
"""

import contextlib
import mmap
import threading
from dataclasses import dataclass
from typing import Dict, Iterator, Mapping, NamedTuple, Optional, Sequence, Type, Union

import numpy as np
import torch

from ..data.panoptic_io import VOID_ID, PanopticDataError
from .png import FilteredPng, decode_rgba, joint_counts

__all__ = [
    "MAX_SEGMENT_ID",
    "PQStatistics",
    "PanopticPredictionError",
    "Segments",
    "check_segment_ids",
    "ground_truth_ids",
    "image_pq_statistics",
    "image_statistics",
    "joint_histogram",
    "pq_per_category",
    "pq_summary",
    "rgba_ids",
    "segment_index_map",
    "segments_from_info",
]

# Segment ids must fit the 24 bits of a COCO-panoptic PNG (id = R + 256 G + 256² B).
MAX_SEGMENT_ID = 256**3 - 1
# Segment ids are looked up by the 16 bits (id >> shift) & _SLOT_MASK, for the first of these
# shifts that separates the ids of the image (see segment_index_map).
_SLOT_MASK = 0xFFFF
_SLOT_SHIFTS = (0, 8, 4)
# A GT id map: an integer tensor (H, W), a COCO-panoptic PNG's pixels as uint8 RGBA (H, W, 4), or
# the PNG itself, not yet unfiltered (see image_pq_statistics).
GroundTruth = Union[torch.Tensor, np.ndarray, FilteredPng]
# Number of offending ids listed in an error message.
_MAX_LISTED = 10
# The CPU route (see _cpu_joint_histogram) counts predicted ids as they are (no lookup) when they
# lie in [0, max listed id] and the histogram then has at most this many bins per pixel.
_DIRECT_BINS_PER_PIXEL = 1
# It counts each pixel in one of this many lanes (a power of 2) of its histogram bin.
_LANES = 8


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


@dataclass
class PQStatistics:
    """Per-category PQ counts, summed over images.

    Attributes:
        tp, fp, fn: int64 (C,), numbers of true positives, false positives, false negatives.
        iou_sum: float64 (C,), sum of the IoUs of the true positives.
    """

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    iou_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_categories: int, device: torch.device = "cpu") -> "PQStatistics":
        """Statistics of no image."""
        count = torch.zeros(num_categories, dtype=torch.int64, device=device)
        return cls(count, count.clone(), count.clone(), count.to(torch.float64))

    def __add__(self, other: "PQStatistics") -> "PQStatistics":
        """Statistics of the images of both (same device)."""
        return PQStatistics(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.iou_sum + other.iou_sum,
        )

    def add_(self, other: "PQStatistics") -> "PQStatistics":
        """Add the statistics of ``other`` to these, in place (CPU tensors; numpy adds, whose
        per-call cost is a fraction of torch's); returns self."""
        for total, value in zip(
            (self.tp, self.fp, self.fn, self.iou_sum),
            (other.tp, other.fp, other.fn, other.iou_sum),
        ):
            array = total.numpy()
            np.add(array, value.numpy(), out=array)
        return self

    def cpu(self) -> "PQStatistics":
        """The same statistics on the CPU."""
        return PQStatistics(self.tp.cpu(), self.fp.cpu(), self.fn.cpu(), self.iou_sum.cpu())


def _listed(values: Sequence) -> str:
    values = list(values)
    more = f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else ""
    return f"{values[:_MAX_LISTED]}{more}"


def _segment_table(segments_info: Sequence[Mapping], describe: str, error: Type[ValueError]):
    """(ids, isthing, category_id, iscrowd) int64 arrays (K,) of a segments_info list."""
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
    table = table.astype(np.int64)
    return table[:, 0], table[:, 1].astype(bool), table[:, 2], table[:, 3].astype(bool)


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
    ids, isthing, category_id, iscrowd = _segment_table(segments_info, describe, error)
    _check_ids(ids, describe, error)
    _check_categories(ids, isthing, category_id, num_things, num_stuff, describe, error)
    categories = np.where(isthing, category_id, num_things + category_id - 1)
    return Segments(torch.as_tensor(ids), torch.as_tensor(categories), torch.as_tensor(iscrowd))


def _integer_id_map(id_map: torch.Tensor, describe: str) -> torch.Tensor:
    if id_map.dtype.is_floating_point or id_map.dtype.is_complex or id_map.dtype == torch.bool:
        raise PanopticPredictionError(
            f"{describe}: the id map has dtype {id_map.dtype}; expected an integer tensor"
        )
    return id_map if id_map.dtype in (torch.int32, torch.int64) else id_map.to(torch.int32)


def _index_by_table(flat: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Indices of ids below 2^16: ``table[id + 1]``, with every negative id in the first entry and
    every id above the largest known one in the last."""
    top = int(known.max())
    table = torch.full((top + 3,), len(known), dtype=torch.int32)
    table[known + 1] = torch.arange(len(known), dtype=torch.int32)
    return table.to(flat.device).index_select(0, flat.clamp(-1, top + 1) + 1)


def _slot_shift(known: torch.Tensor) -> Optional[int]:
    """A shift s such that ``(id >> s) & 0xFFFF`` differs between all ``known`` ids, or None."""
    for shift in _SLOT_SHIFTS:
        if len(torch.unique((known >> shift) & _SLOT_MASK)) == len(known):
            return shift
    return None


def _index_by_hash(flat: torch.Tensor, known: torch.Tensor, shift: int) -> torch.Tensor:
    """Indices through a table of 2^16 slots, ``(id >> shift) & 0xFFFF``; each pixel's id is
    compared with its slot's."""
    slots = (known >> shift) & _SLOT_MASK
    id_of_slot = torch.full((_SLOT_MASK + 1,), -1, dtype=flat.dtype)
    id_of_slot[slots] = known.to(flat.dtype)
    index_of_slot = torch.full((_SLOT_MASK + 1,), len(known), dtype=torch.int32)
    index_of_slot[slots] = torch.arange(len(known), dtype=torch.int32)
    slot = (flat >> shift if shift else flat) & _SLOT_MASK
    found = id_of_slot.to(flat.device).index_select(0, slot) == flat
    return torch.where(found, index_of_slot.to(flat.device).index_select(0, slot), len(known))


def _index_by_search(flat: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Indices by binary search among the sorted known ids."""
    ordered, order = torch.sort(known)
    ordered = ordered.to(device=flat.device, dtype=flat.dtype)
    slot = torch.searchsorted(ordered, flat).clamp_(max=len(known) - 1)
    found = ordered.index_select(0, slot) == flat
    index = order.to(device=flat.device, dtype=torch.int32).index_select(0, slot)
    return torch.where(found, index, len(known))


def segment_index_map(id_map: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Replace each segment id of an id map by its position in ``segment_ids``.

    Ids below 2^16 (models number their segments 1..K) are looked up directly in a table; larger
    ones (COCO's GT ids are 24-bit colors) in a table of 2^16 slots indexed by 16 of their bits,
    chosen so that the listed ids and void fall in distinct slots, or, when no such bits exist,
    by binary search.

    Args:
        id_map: int32 or int64 (H, W), segment id per pixel, 0 = void.
        segment_ids: int64 (K,), distinct ids in [1, MAX_SEGMENT_ID], on the CPU.
    Returns:
        int32 (H, W) on ``id_map``'s device: 0 for void, ``k + 1`` for ``segment_ids[k]``,
        ``K + 1`` for any other id (negative ones included).
    """
    flat = id_map.reshape(-1)
    known = torch.cat([segment_ids.new_tensor([VOID_ID]), segment_ids])  # index i: known[i]
    if int(known.max()) < _SLOT_MASK:
        return _index_by_table(flat, known).view(id_map.shape)
    shift = _slot_shift(known)
    if shift is None:
        return _index_by_search(flat, known).view(id_map.shape)
    return _index_by_hash(flat, known, shift).view(id_map.shape)


def joint_histogram(
    gt_index: torch.Tensor, num_gt: int, pred_index: torch.Tensor, num_pred: int
) -> torch.Tensor:
    """Pixel counts of every (GT segment, predicted segment) pair.

    Args:
        gt_index: int32 (H, W), values in [0, num_gt + 1] (see :func:`segment_index_map`).
        pred_index: int32 (H, W), values in [0, num_pred + 1].
    Returns:
        int64 (num_gt + 2, num_pred + 2): entry [i, j] counts the pixels with GT index i and
        predicted index j; row/column 0 is void, the last row/column unknown ids.
    """
    width = num_pred + 2
    # int32 keys unless there are too many pairs of segments for them (half the memory traffic)
    dtype = torch.int32 if (num_gt + 2) * width <= torch.iinfo(torch.int32).max else torch.int64
    key = pred_index.to(dtype).add(gt_index.to(dtype), alpha=width).view(-1)
    return torch.bincount(key, minlength=(num_gt + 2) * width).view(num_gt + 2, width)


def rgba_ids(rgba: np.ndarray) -> np.ndarray:
    """The segment ids of a COCO-panoptic PNG decoded as RGBA, modulo 2^24.

    Args:
        rgba: uint8 (H, W, 4), C-contiguous: R, G, B as in the PNG (``id = R + 256 G + 256² B``),
            any alpha.
    Returns:
        int32 (H, W), a view: each pixel's 4 bytes read as a little-endian word,
        ``id + 2^24 A`` modulo 2^32; with A = 255, ``id - 2^24``.
    """
    return rgba.view("<i4")[..., 0]


def ground_truth_ids(gt_id_map: GroundTruth) -> torch.Tensor:
    """A GT id map in any of its forms (see :func:`image_pq_statistics`) as an integer tensor
    (H, W): the tensor itself, or int32 ids of RGBA pixels or of a PNG, on the CPU."""
    if isinstance(gt_id_map, torch.Tensor):
        return gt_id_map
    if isinstance(gt_id_map, FilteredPng):
        gt_id_map = decode_rgba(gt_id_map)
    return torch.from_numpy(rgba_ids(gt_id_map) & MAX_SEGMENT_ID)


class _IdTable(threading.local):
    """One uint16 per 24-bit segment id, zero except while an image is looked up; one per thread.

    The 32 MiB are an anonymous private memory map: a page that was never written reads as zero
    without being backed, and :meth:`rows` gives the written pages back after each image, so
    the resident memory is a few pages (those of the image's ids), whatever the number of images.
    """

    def __init__(self):
        size = 2 * (MAX_SEGMENT_ID + 1)
        if hasattr(mmap, "MAP_PRIVATE"):
            self.memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        else:  # Windows: no flags, no madvise
            self.memory = mmap.mmap(-1, size)
        self.table = np.frombuffer(self.memory, dtype=np.uint16)

    @contextlib.contextmanager
    def rows(self, gt_ids: np.ndarray, step: int) -> Iterator[np.ndarray]:
        """The table with ``(k + 1) * step`` at void (k = 0) and at ``gt_ids[k - 1]``, zero
        elsewhere (ids not listed), while the block runs; cleared and its pages given back
        after."""
        known = np.concatenate([[VOID_ID], gt_ids])
        self.table[known] = np.arange(step, (len(known) + 1) * step, step, dtype=np.uint16)
        try:
            yield self.table
        finally:
            self.table[known] = 0
            if hasattr(self.memory, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                self.memory.madvise(mmap.MADV_DONTNEED)


_id_tables = _IdTable()


def _gt_row_offsets(
    gt_id_map: Union[torch.Tensor, np.ndarray], gt_ids: np.ndarray, width: int
) -> Optional[np.ndarray]:
    """``row * width`` for each GT pixel, row being 0 for an id not in ``gt_ids``, 1 for void,
    k + 2 for ``gt_ids[k]``: uint16 (H * W,) numpy array; or None where this does not apply (an
    id map outside [0, MAX_SEGMENT_ID], or (len(gt_ids) + 2) * width > 2^16)."""
    if (len(gt_ids) + 2) * width > 1 << 16:
        return None
    if isinstance(gt_id_map, torch.Tensor):
        low, high = (int(x) for x in torch.aminmax(gt_id_map))
        if low < VOID_ID or high > MAX_SEGMENT_ID:
            return None
        values = gt_id_map.reshape(-1).numpy()
    else:
        values = rgba_ids(gt_id_map).reshape(-1)
    with _id_tables.rows(gt_ids, width) as table:
        try:
            # Indices in [-2^24, 0) count from the end: an RGBA pixel with A = 255 gives its id.
            return np.take(table, values)
        except IndexError:  # RGBA with another alpha
            return np.take(table, values & MAX_SEGMENT_ID)


class _Lanes(threading.local):
    """``i % _LANES`` for the pixels i of the last image size, one per thread."""

    lanes: Optional[np.ndarray] = None

    def of(self, num_pixels: int) -> np.ndarray:
        if self.lanes is None or len(self.lanes) != num_pixels:
            self.lanes = np.arange(num_pixels, dtype=np.int32) % _LANES
        return self.lanes


_lanes = _Lanes()


def _png_counts(
    png: FilteredPng, gt_ids: np.ndarray, columns: np.ndarray, width: int
) -> Optional[np.ndarray]:
    """Counts of :func:`_cpu_joint_histogram`'s (GT row, column) pairs, rows as in
    :func:`_gt_row_offsets`, straight from a GT PNG (see :func:`.png.joint_counts`): int64
    (len(gt_ids) + 2, width); None when there are more than 2^16 - 2 GT segments."""
    rows = len(gt_ids) + 2
    if rows > _SLOT_MASK + 1:
        return None
    with _id_tables.rows(gt_ids, 1) as table:
        return joint_counts(png, table, rows, columns, width).reshape(rows, width)


def _bincount_rows(offsets: np.ndarray, columns: np.ndarray, rows: int, width: int) -> np.ndarray:
    """Counts of each ``offsets + columns`` value (uint16 and int32/int64 (H * W,)): int64
    (rows, width)."""
    num_pixels = len(columns)
    key = np.add(offsets, columns, dtype=np.int64 if columns.dtype == np.int64 else np.int32)
    if _LANES * rows * width <= num_pixels:
        # Neighbouring pixels mostly share their key, and bincount's increments of one counter
        # wait for each other; counting pixel i in lane i % _LANES of its bin breaks that chain.
        np.left_shift(key, _LANES.bit_length() - 1, out=key)
        np.bitwise_or(key, _lanes.of(num_pixels), out=key)
        counts = torch.bincount(torch.from_numpy(key), minlength=_LANES * rows * width)
        counts = counts.numpy().reshape(-1, _LANES).sum(1)
    else:
        counts = torch.bincount(torch.from_numpy(key), minlength=rows * width).numpy()
    return counts.reshape(rows, width)


def _cpu_joint_histogram(
    gt_id_map: GroundTruth,
    gt_ids: torch.Tensor,
    pred_id_map: torch.Tensor,
    pred_ids: torch.Tensor,
) -> Optional[np.ndarray]:
    """The values of :func:`joint_histogram` of the two id maps' segment indices, on the CPU,
    without an index map per side: each GT pixel's row is looked up in one table of all 24-bit
    ids, as the PNG is unfiltered (:func:`_png_counts`) or in an id map (:func:`_gt_row_offsets`);
    predicted ids are counted as they are when they lie in [0, max listed id] (models number
    their segments 1..K), through :func:`segment_index_map` otherwise. None where the GT lookup
    does not apply.
    """
    rows = len(gt_ids) + 2
    pred_flat = pred_id_map.reshape(-1).numpy()
    num_pixels = len(pred_flat)
    top = int(pred_ids.max()) if len(pred_ids) else VOID_ID
    direct = rows * (top + 1) <= _DIRECT_BINS_PER_PIXEL * max(num_pixels, 1)
    if direct and num_pixels:
        direct = pred_flat.min() >= VOID_ID and pred_flat.max() <= top
    width = top + 1 if direct else len(pred_ids) + 2  # column = predicted id, or index
    if not direct:
        pred_flat = segment_index_map(torch.from_numpy(pred_flat), pred_ids).numpy()
    if isinstance(gt_id_map, FilteredPng):
        counts = _png_counts(gt_id_map, gt_ids.numpy(), pred_flat, width)
    else:
        offsets = _gt_row_offsets(gt_id_map, gt_ids.numpy(), width)
        counts = None if offsets is None else _bincount_rows(offsets, pred_flat, rows, width)
    if counts is None:
        return None
    counts = np.concatenate([counts[1:], counts[:1]])  # void, gt_ids, unlisted ids
    if not direct:
        return counts
    listed = counts[:, np.concatenate([[VOID_ID], pred_ids.numpy()])]
    unlisted = counts.sum(1) - listed.sum(1)
    return np.concatenate([listed, unlisted[:, None]], 1)


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
        histogram: the :func:`joint_histogram` of the two maps (a tensor on any device, or its
            values as a numpy array).
        gt_id_map, pred_id_map: the id maps (H, W) (the GT's may be RGBA pixels or a PNG, see
            :func:`image_pq_statistics`).
        gt_ids, pred_ids: int64 (Kg,), (Kp,), the ids listed in ``segments_info``.
        describe: names the image in error messages.
    Raises:
        PanopticDataError: the GT map has an unlisted id, or a listed GT id has no pixel.
        PanopticPredictionError: the same for the prediction.
    """
    counts = _host(histogram)
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


def _host(histogram: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    return histogram.cpu().numpy() if isinstance(histogram, torch.Tensor) else histogram


def image_statistics(
    histogram: Union[torch.Tensor, np.ndarray], gt: Segments, pred: Segments, num_categories: int
) -> PQStatistics:
    """PQ statistics of one image from its joint histogram.

    The rules run on the CPU, in numpy: a few operations on (Kg, Kp) matrices, where numpy's
    per-operation cost is well below torch's.

    Args:
        histogram: int64 (Kg + 2, Kp + 2) from :func:`joint_histogram`, checked by
            :func:`check_segment_ids` (every listed segment has pixels, no unknown ids); a tensor
            on any device, or its values as a numpy array.
        gt, pred: the segments behind the histogram's rows and columns (any device).
        num_categories: C.
    Returns:
        this image's statistics, on the CPU.
    """
    num_gt, num_pred = len(gt.ids), len(pred.ids)
    gt_categories, gt_crowd = gt.categories.cpu().numpy(), gt.iscrowd.cpu().numpy()
    pred_categories = pred.categories.cpu().numpy()
    counts = _host(histogram)[: num_gt + 1, : num_pred + 1]
    gt_area = counts[1:].sum(1)  # (Kg,)
    pred_area = counts[:, 1:].sum(0)  # (Kp,)
    pred_on_void = counts[0, 1:]  # (Kp,) pixels of each predicted segment on GT void
    intersection = counts[1:, 1:]  # (Kg, Kp)
    union = pred_area + gt_area[:, None] - intersection - pred_on_void  # >= gt_area > 0
    same_category = gt_categories[:, None] == pred_categories
    matched = same_category & ~gt_crowd[:, None] & (2 * intersection > union)
    iou = np.where(matched, intersection / union, 0.0)  # float64
    gt_matched, pred_matched = matched.any(1), matched.any(0)

    # Index of the last crowd GT segment of each category; num_gt (a zero row below) when none.
    crowd = np.flatnonzero(gt_crowd)
    last_crowd = np.full(num_categories, -1, dtype=np.int64)
    np.maximum.at(last_crowd, gt_categories[crowd], crowd)
    last_crowd[last_crowd < 0] = num_gt
    with_zero_row = np.concatenate([intersection, np.zeros((1, num_pred), intersection.dtype)])
    on_crowd = with_zero_row[last_crowd[pred_categories], np.arange(num_pred)]
    ignored = 2 * (pred_on_void + on_crowd) > pred_area

    def per_category(categories: np.ndarray, values: np.ndarray) -> torch.Tensor:
        total = np.bincount(categories, weights=values, minlength=num_categories)
        return torch.from_numpy(total if values.dtype == np.float64 else total.astype(np.int64))

    return PQStatistics(
        tp=per_category(gt_categories, gt_matched),
        fp=per_category(pred_categories, ~pred_matched & ~ignored),
        fn=per_category(gt_categories, ~gt_matched & ~gt_crowd),
        iou_sum=per_category(gt_categories, iou.sum(1)),
    )


def image_pq_statistics(
    gt_id_map: GroundTruth,
    gt: Segments,
    pred_id_map: torch.Tensor,
    pred: Segments,
    num_categories: int,
    describe: str,
) -> PQStatistics:
    """PQ statistics of one image, on the CPU.

    The pixels are counted on the prediction's device (on the CPU, through one lookup table of all
    24-bit ids for the GT, as a GT PNG is unfiltered row by row, see
    :func:`_cpu_joint_histogram`), into one joint histogram of (GT segment, predicted segment)
    pixel counts; the rest, on the CPU, only reads that histogram.

    Args:
        gt_id_map: the GT segment id per pixel (0 = void): an integer tensor (H, W), moved to
            ``pred_id_map``'s device; or the COCO-panoptic PNG's pixels as a uint8 RGBA numpy
            array (H, W, 4), C-contiguous, ``id = R + 256 G + 256² B`` (alpha ignored; fastest
            with alpha 255, see :func:`rgba_ids`); or that PNG, inflated but not unfiltered
            (:class:`.png.FilteredPng`; fastest with predictions on the CPU).
        gt: the GT segments.
        pred_id_map: integer (H, W), predicted segment id per pixel (0 = void).
        pred: the predicted segments.
        num_categories: C.
        describe: names the image in error messages.
    Raises:
        PanopticPredictionError: the prediction's size differs from the GT's, its dtype is not an
            integer one, or its map and segments_info disagree.
        PanopticDataError: the GT map and its segments_info disagree.
    """
    gt_shape = tuple(gt_id_map.shape[:2])
    if tuple(pred_id_map.shape) != gt_shape:
        raise PanopticPredictionError(
            f"{describe}: the prediction is {tuple(pred_id_map.shape)} (HxW), the ground truth "
            f"{gt_shape}; predictions must be at the image's original size"
        )
    pred_id_map = _integer_id_map(pred_id_map, describe)
    on_cpu = not isinstance(gt_id_map, torch.Tensor) or gt_id_map.device.type == "cpu"
    histogram = None
    if on_cpu and pred_id_map.device.type == "cpu":
        histogram = _cpu_joint_histogram(gt_id_map, gt.ids, pred_id_map, pred.ids)
    if histogram is None:
        gt_id_map = ground_truth_ids(gt_id_map).to(pred_id_map.device)
        histogram = (
            joint_histogram(
                segment_index_map(gt_id_map, gt.ids),
                len(gt.ids),
                segment_index_map(pred_id_map, pred.ids),
                len(pred.ids),
            )
            .cpu()
            .numpy()
        )
    check_segment_ids(histogram, gt_id_map, gt.ids, pred_id_map, pred.ids, describe)
    return image_statistics(histogram, gt, pred, num_categories)


def pq_per_category(statistics: PQStatistics) -> Dict[str, np.ndarray]:
    """PQ, SQ, RQ of every category.

    Returns:
        "pq", "sq", "rq": float64 (C,) fractions in [0, 1], NaN for categories with no GT and
        no predicted segment; "counted": bool (C,), the categories that have some.
    """
    tp, fp, fn = (
        x.cpu().numpy().astype(np.float64) for x in (statistics.tp, statistics.fp, statistics.fn)
    )
    iou_sum = statistics.iou_sum.cpu().numpy()
    counted = tp + fp + fn > 0
    denominator = np.where(counted, tp + 0.5 * fp + 0.5 * fn, 1.0)
    sq = np.divide(iou_sum, tp, out=np.zeros_like(iou_sum), where=tp > 0)
    return {
        "pq": np.where(counted, iou_sum / denominator, np.nan),
        "sq": np.where(counted, sq, np.nan),
        "rq": np.where(counted, tp / denominator, np.nan),
        "counted": counted,
    }


def pq_summary(statistics: PQStatistics, isthing: np.ndarray) -> Dict[str, Dict[str, float]]:
    """PQ, SQ, RQ of all categories, of things and of stuff.

    Args:
        statistics: the accumulated statistics.
        isthing: bool (C,), which categories are things.
    Returns:
        {"All" | "Things" | "Stuff": {"pq", "sq", "rq": mean over the group's counted categories
        (fractions in [0, 1]), "n": number of counted categories}}; the means are NaN when the
        group has no counted category (the reference divides by zero there).
    """
    per_category = pq_per_category(statistics)
    summary = {}
    for name, group in (("All", np.ones_like(isthing)), ("Things", isthing), ("Stuff", ~isthing)):
        members = group & per_category["counted"]
        n = int(members.sum())
        summary[name] = {
            key: float(per_category[key][members].mean()) if n else float("nan")
            for key in ("pq", "sq", "rq")
        }
        summary[name]["n"] = n
    return summary
