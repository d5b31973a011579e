"""Instance masks stored cropped to their boxes: the training-target structure of the mapper.

Detectron2's ``BitMasks`` holds every instance's mask at full image size, and its
``crop_and_resize`` converts every selected mask to float32 before ROIAlign (~3.4 MB per mask at
800x1067). :class:`CroppedMasks` holds each mask only inside its tight box, and computes the
Mask R-CNN targets from those crops in compiled code that reproduces torchvision's CPU
``roi_align`` (``aligned=True``, adaptive sampling) step by step in float32 on the full image's
coordinates: a sample outside a crop reads 0, as it would on the full mask, so the targets are
those of ``BitMasks.crop_and_resize`` bit for bit (``tests/test_cropped_masks.py``).

Like Detectron2's ``PolygonMasks``, the structure stays on the CPU whatever ``.to(device)``
asks, and ``crop_and_resize`` returns its targets on the device of the boxes.
"""

from typing import Any, List, Union

import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes

from ..evaluation.jit import jit

__all__ = ["CroppedMasks"]

_ZERO, _HALF, _ONE = np.float32(0), np.float32(0.5), np.float32(1)


@jit
def _sample_axis(start, bin_size, grid, num_bins, limit, low, high, lerp):
    """The samples of one axis of torchvision's ``roi_align`` (``pre_calc_for_bilinear_interpolate``
    in float32, the same operations in the same order): for bin ``b`` and sample ``i`` of it,
    entry ``b * grid + i`` gets the two pixel indices interpolated (``low``, ``high``) and the
    weight of ``high`` (``lerp``), or ``low = -1`` for a sample outside ``[-1, limit]``."""
    for b in range(num_bins):
        for i in range(grid):
            position = (start + np.float32(b) * bin_size) + (
                np.float32(i + _HALF) * bin_size
            ) / np.float32(grid)
            k = b * grid + i
            if not (position >= -1.0 and position <= limit):
                low[k] = -1
                continue
            if position <= 0:
                position = _ZERO
            first = np.int64(position)
            if first >= limit - 1:
                first = limit - 1
                low[k], high[k], lerp[k] = first, first, np.float32(first) - np.float32(first)
            else:
                low[k], high[k], lerp[k] = first, first + 1, position - np.float32(first)


# Unit roundoff of float32: every float32 operation's result is within this relative distance.
_UNIT_ROUNDOFF = 2.0**-24


@jit
def _read(data, base, top, left, height, width, y, x):
    """Pixel (y, x) of the image's mask whose crop starts at ``data[base]``, as float32: 0 outside
    the crop (the crop is the mask's tight box)."""
    y, x = y - top, x - left
    if y < 0 or y >= height or x < 0 or x >= width:
        return _ZERO
    return np.float32(data[base + y * width + x])


@jit
def _exact_bin(crop, y_low, y_high, ly, x_low, x_high, lx, rows, columns, count):
    """torchvision's float32 value of one bin: the samples ``rows`` x ``columns`` (ranges of
    indices into the axis arrays of :func:`_sample_axis`) summed in its order, over ``count``.
    ``crop`` is (data, base, top, left, height, width)."""
    data, base, top, left, height, width = crop
    total = _ZERO
    for iy in rows:
        if y_low[iy] < 0:
            continue
        hy = _ONE - ly[iy]
        for ix in columns:
            if x_low[ix] < 0:
                continue
            hx = _ONE - lx[ix]
            v1 = _read(data, base, top, left, height, width, y_low[iy], x_low[ix])
            v2 = _read(data, base, top, left, height, width, y_low[iy], x_high[ix])
            v3 = _read(data, base, top, left, height, width, y_high[iy], x_low[ix])
            v4 = _read(data, base, top, left, height, width, y_high[iy], x_high[ix])
            total += ((hy * hx) * v1 + (hy * lx[ix]) * v2 + (ly[iy] * hx) * v3) + (
                ly[iy] * lx[ix]
            ) * v4
    return total / count


@jit
def _axis_weights(low, high, lerp, grid, num_bins, origin, length):
    """Per bin, the summed interpolation weight of each pixel of the crop's axis (float64
    (num_bins, length), from the float32 weights), and the first and last pixel with a weight
    (``last < first`` where none)."""
    weights = np.zeros((num_bins, length))
    first, last = np.full(num_bins, length), np.full(num_bins, -1)
    for k in range(num_bins * grid):
        if low[k] < 0:
            continue
        b = k // grid
        for pixel, weight in ((low[k], _ONE - lerp[k]), (high[k], lerp[k])):
            p = pixel - origin
            if 0 <= p < length:
                weights[b, p] += np.float64(weight)
                first[b], last[b] = min(first[b], p), max(last[b], p)
    return weights, first, last


@jit
def _roi_targets(crop, image_height, image_width, roi, size, out):
    """The thresholded ROIAlign of one box over one crop into ``out`` (bool (size, size)).

    Each bin's value is first computed in float64 by separable sums over the crop (rows, then
    columns), from torchvision's own float32 sample positions and weights; it differs from
    torchvision's float32 value by less than ``(count + 8) * 2^-24``: the rounding of its float32
    products and its sum of ``count`` samples (each product of two float32 is exact in float64).
    Only a bin within that distance of 0.5 is recomputed in torchvision's float32 order.
    """
    data, base, top, left, height, width = crop
    start_x, start_y = roi[0] - _HALF, roi[1] - _HALF
    roi_width, roi_height = (roi[2] - _HALF) - start_x, (roi[3] - _HALF) - start_y
    bin_w, bin_h = roi_width / np.float32(size), roi_height / np.float32(size)
    grid_w, grid_h = np.int64(np.ceil(bin_w)), np.int64(np.ceil(bin_h))
    count = np.float32(max(grid_h * grid_w, 1))
    grid_w, grid_h = max(grid_w, 0), max(grid_h, 0)
    x_low, x_high = np.empty(grid_w * size, np.int64), np.empty(grid_w * size, np.int64)
    y_low, y_high = np.empty(grid_h * size, np.int64), np.empty(grid_h * size, np.int64)
    lx, ly = np.empty(grid_w * size, np.float32), np.empty(grid_h * size, np.float32)
    _sample_axis(start_x, bin_w, grid_w, size, image_width, x_low, x_high, lx)
    _sample_axis(start_y, bin_h, grid_h, size, image_height, y_low, y_high, ly)
    row_weights, row_first, row_last = _axis_weights(y_low, y_high, ly, grid_h, size, top, height)
    column_weights, column_first, column_last = _axis_weights(
        x_low, x_high, lx, grid_w, size, left, width
    )
    rows = np.zeros((size, width))  # per bin row, the row-weighted sum of the crop's rows
    for ph in range(size):
        for y in range(row_first[ph], row_last[ph] + 1):
            weight, position = row_weights[ph, y], base + y * width
            for x in range(width):
                rows[ph, x] += weight * data[position + x]
    tolerance = (np.float64(count) + 8) * _UNIT_ROUNDOFF + 2.0**-40
    for ph in range(size):
        for pw in range(size):
            value = 0.0
            for x in range(column_first[pw], column_last[pw] + 1):
                value += rows[ph, x] * column_weights[pw, x]
            value /= np.float64(count)
            if abs(value - 0.5) > tolerance:
                out[ph, pw] = value > 0.5
            else:
                bin_rows = range(ph * grid_h, (ph + 1) * grid_h)
                bin_columns = range(pw * grid_w, (pw + 1) * grid_w)
                exact = _exact_bin(
                    crop, y_low, y_high, ly, x_low, x_high, lx, bin_rows, bin_columns, count
                )
                out[ph, pw] = exact >= _HALF


@jit
def _roi_align_crops(data, offsets, boxes, image_height, image_width, rois, size, out):
    """See :meth:`CroppedMasks.crop_and_resize`; ``out`` is bool (R, size, size)."""
    for r in range(rois.shape[0]):
        left, top = boxes[r, 0], boxes[r, 1]
        crop = (data, offsets[r], top, left, boxes[r, 3] - top, boxes[r, 2] - left)
        _roi_targets(crop, image_height, image_width, rois[r], size, out[r])


@jit
def _paste(data, offsets, boxes, masks):
    """Fill ``masks`` (bool (N, H, W), zeros) with each instance's crop."""
    for n in range(masks.shape[0]):
        left, top, right, bottom = boxes[n, 0], boxes[n, 1], boxes[n, 2], boxes[n, 3]
        position = offsets[n]
        for y in range(top, bottom):
            for x in range(left, right):
                masks[n, y, x] = data[position]
                position += 1


class CroppedMasks:
    """The masks of N instances of one image, each stored inside its tight box.

    The interface of Detectron2's ``BitMasks`` that its RoI heads and data utilities use:
    ``len``, indexing (int, slice, bool or int64 tensor, list), ``to``, ``device``,
    ``image_size``, ``nonempty``, ``get_bounding_boxes``, ``crop_and_resize`` (the same bool
    targets as ``BitMasks``) and ``cat``; ``tensor`` gives the full-size masks where code needs
    them (O(N * H * W), as a ``BitMasks`` holds them).

    Attributes:
        data: bool (P,), the crops one after the other, each row-major; shared by the
            structures that indexing returns (P is the sum of the boxes' areas).
        offsets: int64 (N,), where each instance's crop starts in ``data``.
        boxes: int64 (N, 4), each instance's tight box (x0, y0, x1, y1) in pixels, x1 and y1
            exclusive: the crop is ``mask[y0:y1, x0:x1]``; all zeros for an empty mask.
        image_size: (H, W) of the image, pixels.
    """

    def __init__(self, data: torch.Tensor, offsets: torch.Tensor, boxes: torch.Tensor, image_size):
        self.data, self.offsets, self.boxes = data, offsets, boxes
        self.image_size = (int(image_size[0]), int(image_size[1]))

    @staticmethod
    def from_masks(masks: Union[torch.Tensor, np.ndarray]) -> "CroppedMasks":
        """The crops of full-size bool masks (N, H, W)."""
        masks = torch.as_tensor(np.asarray(masks, dtype=bool))
        bitmasks = BitMasks(masks)
        boxes = bitmasks.get_bounding_boxes().tensor.to(torch.int64)
        crops = [m[y0:y1, x0:x1].reshape(-1) for m, (x0, y0, x1, y1) in zip(masks, boxes.tolist())]
        areas = torch.tensor([len(c) for c in crops], dtype=torch.int64)
        offsets = torch.cumsum(areas, 0) - areas
        data = torch.cat(crops) if crops else torch.zeros(0, dtype=torch.bool)
        return CroppedMasks(data, offsets, boxes, masks.shape[1:])

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, item: Any) -> "CroppedMasks":
        """The instances ``item`` selects (a view: the crops are not copied). An int gives a
        structure of one instance, as ``BitMasks`` does; a tensor index on a GPU is brought to
        the CPU (one synchronisation, as ``PolygonMasks`` does)."""
        if isinstance(item, torch.Tensor):
            item = item.cpu()
        index = torch.arange(len(self))[item].reshape(-1)
        return CroppedMasks(self.data, self.offsets[index], self.boxes[index], self.image_size)

    def __repr__(self) -> str:
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"

    def to(self, *args: Any, **kwargs: Any) -> "CroppedMasks":
        """Itself: the crops stay on the CPU (see the module)."""
        return self

    @property
    def device(self) -> torch.device:
        return self.data.device

    def nonempty(self) -> torch.Tensor:
        """bool (N,): whether each mask has a pixel."""
        return (self.boxes[:, 2] > self.boxes[:, 0]) & (self.boxes[:, 3] > self.boxes[:, 1])

    def get_bounding_boxes(self) -> Boxes:
        """The tight boxes as float32 ``Boxes``, as ``BitMasks.get_bounding_boxes`` gives them."""
        return Boxes(self.boxes.to(torch.float32))

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """Mask R-CNN targets: each mask's ROIAlign over its box, thresholded at 0.5.

        Args:
            boxes: float (N, 4), one box per mask (x0, y0, x1, y1), pixels, any device.
            mask_size: M, the side of the targets.
        Returns:
            bool (N, M, M) on ``boxes``' device, equal to ``BitMasks.crop_and_resize`` of the
            full-size masks on the CPU.
        """
        assert len(boxes) == len(self), f"{len(boxes)} != {len(self)}"
        rois = boxes.detach().to(device="cpu", dtype=torch.float32).contiguous()
        targets = np.zeros((len(self), mask_size, mask_size), dtype=bool)
        _roi_align_crops(
            self.data.numpy().view(np.uint8),
            self.offsets.numpy(),
            self.boxes.numpy(),
            *self.image_size,
            rois.numpy(),
            mask_size,
            targets,
        )
        return torch.from_numpy(targets).to(boxes.device)

    @property
    def tensor(self) -> torch.Tensor:
        """The full-size masks, bool (N, H, W)."""
        masks = np.zeros((len(self), *self.image_size), dtype=bool)
        _paste(self.data.numpy(), self.offsets.numpy(), self.boxes.numpy(), masks)
        return torch.from_numpy(masks)

    @staticmethod
    def cat(masks_list: List["CroppedMasks"]) -> "CroppedMasks":
        """The instances of several ``CroppedMasks`` of one image size, in order."""
        assert len(masks_list) > 0 and all(isinstance(m, CroppedMasks) for m in masks_list)
        starts = np.cumsum([0] + [len(m.data) for m in masks_list[:-1]])
        return CroppedMasks(
            torch.cat([m.data for m in masks_list]),
            torch.cat([m.offsets + int(s) for m, s in zip(masks_list, starts)]),
            torch.cat([m.boxes for m in masks_list]),
            masks_list[0].image_size,
        )
