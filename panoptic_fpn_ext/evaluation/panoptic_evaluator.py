"""Streaming panoptic quality evaluation, in Detectron2's ``DatasetEvaluator`` interface."""

import itertools
import logging
import os
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.panoptic_evaluation import _print_panoptic_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from ..data.panoptic_io import PanopticDataError
from .export import PanopticExporter
from .png import FilteredPng, read_filtered_png
from .id_index import ground_truth_ids
from .pq import (
    PanopticPredictionError,
    PQStatistics,
    Segments,
    image_pq_statistics,
    pq_per_category,
    pq_results,
    pq_summary,
    segments_from_info,
)

__all__ = [
    "PanopticQualityEvaluator",
    "read_ground_truth",
    "read_panoptic_id_map",
    "usable_cores",
]

logger = logging.getLogger(__name__)

# Number of image ids listed in an error message.
_MAX_LISTED = 10


def _read_ground_truth_png(path: str) -> Union[FilteredPng, np.ndarray]:
    """Read a COCO-panoptic PNG, pixel for pixel as the reference does (no EXIF orientation, no
    color conversion).

    Args:
        path: an 8-bit RGB (or RGBA, alpha ignored) PNG; ``id = R + 256 G + 256² B``.
    Returns:
        the PNG inflated but not unfiltered (see :mod:`.png`) when it is 8-bit RGB or RGBA without
        interlacing, the format of COCO's and Cityscapes' panoptic annotations; otherwise its
        pixels as uint8 (H, W, 4), C-contiguous: R, G, B and 255 (see :func:`.id_index.rgba_ids`).
    Raises:
        FileNotFoundError: no such file.
        PanopticDataError: the file cannot be decoded, or is not 8-bit RGB/RGBA.
    """
    try:
        with PathManager.open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError) as e:
        raise FileNotFoundError(f"Panoptic PNG {path} does not exist") from e
    png = read_filtered_png(data, path)
    if png is not None:
        return png
    # Other PNGs (interlaced, palette, ...) and other formats: OpenCV, which releases the GIL.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise PanopticDataError(f"Cannot decode panoptic PNG {path}: not a readable image file")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        channels = 1 if image.ndim == 2 else image.shape[2]
        raise PanopticDataError(
            f"Panoptic PNG {path} has {channels} channel(s) of {image.dtype}; expected 8-bit RGB "
            "(segment id = R + 256 G + 256² B)"
        )
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGBA)  # alpha 255
    rgba = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    rgba[..., 3] = 255
    return rgba


def read_panoptic_id_map(path: str) -> torch.Tensor:
    """Read a COCO-panoptic PNG as an id map, pixel for pixel as the reference does (no EXIF
    orientation, no color conversion).

    Args:
        path: an 8-bit RGB (or RGBA, alpha ignored) PNG; ``id = R + 256 G + 256² B``.
    Returns:
        int32 (H, W), segment id per pixel (0 = void), on the CPU.
    Raises:
        FileNotFoundError: no such file.
        PanopticDataError: the file cannot be decoded, or is not 8-bit RGB/RGBA.
    """
    return ground_truth_ids(_read_ground_truth_png(path))


def read_ground_truth(
    record: Mapping[str, Any], num_things: int, num_stuff: int, describe: str
) -> Tuple[Union[FilteredPng, np.ndarray], Segments]:
    """A dataset record's GT: its panoptic PNG (see :func:`_read_ground_truth_png`; nothing is
    written) and its segments, on the CPU.

    Args:
        record: has "pan_seg_file_name", "segments_info", "height" and "width".
        num_things, num_stuff: T and S of the dataset.
        describe: names the image in error messages.
    Raises:
        FileNotFoundError, PanopticDataError: the PNG is missing, unreadable or of another size
            than the record's, or a segment is invalid.
    """
    path = record["pan_seg_file_name"]
    pixels = _read_ground_truth_png(path)
    if tuple(pixels.shape[:2]) != (record["height"], record["width"]):
        raise PanopticDataError(
            f"Panoptic PNG {path} of {describe} is {pixels.shape[0]}x{pixels.shape[1]} "
            f"(HxW); its record says {record['height']}x{record['width']}"
        )
    segments = segments_from_info(
        record["segments_info"],
        num_things,
        num_stuff,
        f"{describe}: ground truth {path}",
        error=PanopticDataError,
    )
    return pixels, segments


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask, as set by taskset or
    a container's cpuset; all of the machine's where the platform has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _listed(values: Sequence) -> str:
    values = list(values)
    more = f" and {len(values) - _MAX_LISTED} more" if len(values) > _MAX_LISTED else ""
    return f"{values[:_MAX_LISTED]}{more}"


class PanopticQualityEvaluator(DatasetEvaluator):
    """Panoptic quality (PQ, SQ, RQ) of a dataset, accumulated image by image.

    For each image, ``process`` hands the work to a pool of threads (by default one per core this
    process may use) and returns: a thread reads the image's GT panoptic PNG (the dataset record's
    ``pan_seg_file_name``; nothing is written), compares it with the prediction on the
    prediction's device through one joint histogram, and the image's per-category TP/FP/FN counts
    and IoU sums are added to running totals (see :mod:`.pq` for the definition, the reference
    one) in the order the images came, so results do not depend on thread timing. At most
    ``2 * num_threads`` predictions wait at any time; with a model on a GPU, the GT decoding
    overlaps the next batch's inference. The threads spend their time in calls that release the
    GIL, so that they run in parallel: with predictions on the CPU, the GT PNG is inflated
    (ISA-L), then unfiltered row by row in compiled code (numba) that counts each pixel's pair of
    GT and predicted segments into the histogram, without decoding the whole image, whatever the
    segment ids' values (see :mod:`.png` and :mod:`.counting`); the PQ rules then read the
    histogram, also in compiled code. The main thread only queues images and adds each image's
    per-category arrays to the totals.
    Memory is a few arrays of one entry per category, whatever the number of images, plus each
    thread's buffers for one image.

    ``evaluate`` gathers those arrays (and the processed image ids) from all processes and reports,
    in percent, like Detectron2's ``COCOPanopticEvaluator``::

        {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st",
                          "PQ_<class>", "SQ_<class>", "RQ_<class>" for every class}}

    A class with no GT and no predicted segment is left out of the means and reported as NaN; so
    are All/Things/Stuff when no class of theirs has any segment.

    Every image of the dataset must be processed exactly once: like the reference, ``evaluate``
    raises naming the image ids without a prediction; ``process`` raises at once for an image id
    that is not in the dataset or comes a second time. Errors found in an image's data (a segment
    of unknown category, an id map that disagrees with its segments_info, a wrong size, a bad GT
    PNG) name the image and are raised by the ``process`` or ``evaluate`` call that collects its
    result.

    Optionally the predictions are also written in COCO panoptic and/or Cityscapes format (see
    :mod:`.export`); the PNGs are then written by the threads and the per-image JSON entries
    kept until ``evaluate``.

    Input: ``inputs[i]`` has "image_id" (and "file_name" for the export); ``outputs[i]
    ["panoptic_seg"]`` is ``(id_map, segments_info)``: an integer tensor (H, W) at the image's
    original size, 0 = void, and dicts with "id", "isthing", "category_id" (contiguous: thing
    0..T-1, stuff 1..S). The tensor must not be modified until ``evaluate``.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        export_formats: Sequence[str] = (),
        distributed: bool = True,
        num_threads: int = 0,
    ):
        """
        Args:
            dataset_name: a registered dataset of the plugin's format (records with
                "pan_seg_file_name" and "segments_info"; metadata with ``thing_classes`` and
                ``stuff_classes``).
            output_dir: where exported predictions go; needed only with ``export_formats``.
            export_formats: any of "coco", "cityscapes".
            distributed: gather the statistics of all processes in ``evaluate``; otherwise
                evaluate what this process saw.
            num_threads: threads that compute the per-image statistics; 0 for one per core this
                process may use (:func:`usable_cores`).
        Raises:
            ValueError: two classes share a name, ``export_formats`` without ``output_dir``, or
                ``num_threads`` < 0.
        """
        self._dataset_name = dataset_name
        metadata = MetadataCatalog.get(dataset_name)
        self._num_things = len(metadata.thing_classes)
        self._num_stuff = len(metadata.stuff_classes) - 1  # stuff_classes[0] is "things"
        self._class_names = list(metadata.thing_classes) + list(metadata.stuff_classes[1:])
        repeated = sorted({n for n in self._class_names if self._class_names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"Dataset {dataset_name}: class name(s) {repeated} appear more than once in "
                "thing_classes + stuff_classes; per-class results need distinct names"
            )
        if num_threads < 0:
            raise ValueError(
                f"num_threads = {num_threads}; expected 0 (one per usable core) or more"
            )
        self._isthing = np.arange(len(self._class_names)) < self._num_things
        self._records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}
        if export_formats and output_dir is None:
            raise ValueError(
                f"Export formats {list(export_formats)} for dataset {dataset_name} need an "
                "output_dir"
            )
        self._exporters = [
            PanopticExporter(f, output_dir, dataset_name, metadata) for f in export_formats
        ]
        self._distributed = distributed
        self._num_threads = num_threads or usable_cores()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Deque[Future] = deque()
        self.reset()

    @property
    def num_threads(self) -> int:
        """The number of threads that compute the per-image statistics."""
        return self._num_threads

    def reset(self) -> None:
        """Forget every image processed so far (waiting for, and dropping, unfinished ones)."""
        self._stop_threads(keep_results=False)
        self._statistics = PQStatistics.zeros(len(self._class_names))
        self._image_ids: set = set()
        self._exported: List[List[Dict[str, Any]]] = [[] for _ in self._exporters]

    def _record(self, image_id: Any) -> Mapping[str, Any]:
        if image_id not in self._records:
            raise PanopticPredictionError(
                f"Prediction for image_id {image_id!r}, which is not in dataset "
                f"{self._dataset_name}"
            )
        if image_id in self._image_ids:
            raise PanopticPredictionError(
                f"image_id {image_id!r} of dataset {self._dataset_name} was processed twice "
                "since the last reset()"
            )
        return self._records[image_id]

    def _ground_truth(self, record: Mapping[str, Any], describe: str):
        """The record's GT PNG and segments (:func:`read_ground_truth`)."""
        return read_ground_truth(record, self._num_things, self._num_stuff, describe)

    def _image_result(
        self,
        image: Mapping[str, Any],
        record: Mapping[str, Any],
        id_map: torch.Tensor,
        segments_info: Sequence[Mapping],
    ) -> Tuple[PQStatistics, List[Dict[str, Any]]]:
        """Statistics of one image (on the prediction's device) and its exported JSON entries."""
        describe = f"image_id {image['image_id']!r} ({record['file_name']})"
        if segments_info is None:
            raise PanopticPredictionError(
                f"{describe}: segments_info is None; expected a list of segments (the "
                "label-divisor output format is not supported)"
            )
        pred = segments_from_info(
            segments_info,
            self._num_things,
            self._num_stuff,
            f"{describe}: prediction",
        )
        gt_pixels, gt = self._ground_truth(record, describe)
        statistics = image_pq_statistics(
            gt_pixels, gt, id_map, pred, len(self._class_names), describe
        )
        return statistics, [e.write(image, id_map, segments_info) for e in self._exporters]

    def _collect(self, future: Future) -> None:
        """Add a finished image's result (or raise its error)."""
        statistics, entries = future.result()
        self._statistics.add_(statistics)
        for exported, entry in zip(self._exported, entries):
            exported.append(entry)

    def _stop_threads(self, keep_results: bool) -> None:
        """Wait for every pending image, adding (or dropping) its result; stop the threads."""
        try:
            while self._pending:
                future = self._pending.popleft()
                if keep_results:
                    self._collect(future)
                else:
                    future.exception()  # waits; the error of a dropped image is dropped too
        finally:
            if self._executor is not None and not self._pending:
                self._executor.shutdown()
                self._executor = None

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        """Queue a batch of predictions (see the class docstring for the format).

        Raises:
            PanopticPredictionError: unknown or repeated image id; or, for an earlier image whose
                result this call collects, see :meth:`evaluate`.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._num_threads, thread_name_prefix="pq_eval")
        for image, output in zip(inputs, outputs):
            record = self._record(image["image_id"])
            self._image_ids.add(image["image_id"])
            id_map, segments_info = output["panoptic_seg"]
            self._pending.append(
                self._executor.submit(self._image_result, image, record, id_map, segments_info)
            )
            while len(self._pending) > 2 * self._num_threads:
                self._collect(self._pending.popleft())

    def _gathered(self, error: Optional[Exception]):
        """(statistics, image ids, exported entries per format, errors) of all processes, on the
        main process; None elsewhere. ``error`` is this process's, if any: it travels with the
        statistics, so that a process that failed does not leave the others waiting."""
        local = (self._statistics, sorted(self._image_ids, key=repr), self._exported, error)
        parts = [local]
        if self._distributed:
            comm.synchronize()
            parts = comm.gather(local, dst=0)
            if not comm.is_main_process():
                return None
        total = PQStatistics.zeros(len(self._class_names))
        for part in parts:
            total = total + part[0]
        image_ids = list(itertools.chain.from_iterable(part[1] for part in parts))
        exported = [
            list(itertools.chain.from_iterable(part[2][k] for part in parts))
            for k in range(len(self._exporters))
        ]
        return total, image_ids, exported, [part[3] for part in parts if part[3] is not None]

    def _check_all_processed(self, image_ids: Sequence[Any]) -> None:
        seen, repeated = set(), set()
        for image_id in image_ids:
            (repeated if image_id in seen else seen).add(image_id)
        if repeated:
            raise PanopticPredictionError(
                f"Dataset {self._dataset_name}: image_id(s) {_listed(sorted(repeated, key=repr))} "
                "were processed by more than one process"
            )
        missing = [i for i in self._records if i not in seen]
        if missing:
            raise PanopticPredictionError(
                f"Dataset {self._dataset_name}: no prediction for {len(missing)} of "
                f"{len(self._records)} images: image_id {_listed(missing)}"
            )

    def _results(self, statistics: PQStatistics) -> Dict[str, float]:
        _print_panoptic_results(pq_summary(statistics, self._isthing))
        self._log_per_class(pq_per_category(statistics))
        return pq_results(statistics, self._isthing, self._class_names)

    def _log_per_class(self, per_category: Dict[str, np.ndarray]) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        rows = [
            [name, "thing" if isthing else "stuff"]
            + [100 * per_category[m][k] for m in ("pq", "sq", "rq")]
            for k, (name, isthing) in enumerate(zip(self._class_names, self._isthing))
        ]
        table = tabulate(
            rows, headers=["class", "kind", "PQ", "SQ", "RQ"], tablefmt="pipe", floatfmt=".3f"
        )
        logger.info(f"Per-class panoptic quality of {self._dataset_name}:\n{table}")

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        """PQ results of every processed image (main process; None on the others).

        Raises:
            PanopticPredictionError: a prediction has a segment of unknown category, an id map
                that disagrees with its segments_info, or another size than its image; some images
                of the dataset have no prediction (their ids are listed); an image was processed
                by several processes.
            PanopticDataError, FileNotFoundError: a GT PNG is missing, unreadable, or disagrees
                with its record.
            The main process raises the first error of any process; a process raises its own.
        """
        try:
            self._stop_threads(keep_results=True)
            error = None
        except (ValueError, OSError) as e:  # an image's bad data (all errors named above)
            error = e
        gathered = self._gathered(error)
        if gathered is None:
            if error is not None:
                raise error
            return None
        statistics, image_ids, exported, errors = gathered
        if errors:
            raise errors[0]
        self._check_all_processed(image_ids)
        for exporter, annotations in zip(self._exporters, exported):
            exporter.finish(annotations)
            logger.info(
                f"Wrote {exporter.export_format} panoptic predictions to {exporter.paths['json']}"
            )
        return OrderedDict({"panoptic_seg": self._results(statistics)})
