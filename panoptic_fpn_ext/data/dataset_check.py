"""Every record of a dataset checked when it is first loaded for training or evaluation.

A bad file is otherwise found by one data-loader worker at some iteration, hours into a COCO run.
What is checked, per record (``PANOPTIC_FPN_EXT.DATA_CHECK``):

* ``"headers"``: the image and the panoptic PNG exist; their headers decode; their sizes agree
  with the record's height and width (the image's after its EXIF rotation, as it is read); the
  image's mode is one the mapper reads (not 32-bit integer or float);
* ``"full"`` (the default), also: the PNG decodes completely (every chunk's CRC, its data
  inflated and unfiltered) and its segment ids are exactly those of ``segments_info``; the image
  file is complete (a JPEG ends with its end-of-image marker, a PNG with its IEND chunk; an image
  that does not, or of another format, is decoded whole). Corrupt data inside a complete JPEG is
  not detected (only decoding the whole image would find it);
* ``"off"``: nothing.

Records are checked in parallel, by as many threads as the process may use cores (its affinity
mask, shared among the processes of one machine in a multi-process run, each of which checks its
share of the records); each verdict is cached per file (see :mod:`.check_cache`), so that a
restart, or a second process, checks only what changed. One ``PanopticDataError`` lists every
bad file (up to ``MAX_LISTED``) and names the dataset.
"""

import logging
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..config import DATA_CHECK_MODES as CHECK_MODES
from .check_cache import VerdictCache, default_cache_directory, verdict_key
from .coco_panoptic import EVALUATOR_TYPE
from .panoptic_io import (
    _DECODE_ERRORS,
    _UNSUPPORTED_MODES,
    PanopticDataError,
    _describe,
    _unreadable,
)
from .panoptic_png import check_panoptic_png

__all__ = ["CHECK_MODES", "MAX_LISTED", "check_dataset_files", "check_datasets", "check_records"]

logger = logging.getLogger(__name__)

# Bad files named in the error; the others are counted.
MAX_LISTED = 20
# (dataset name, its loading function, mode) of the datasets that passed in this process: the
# hooks of one run (train_net.py's start, the mapper, each evaluation) do not load a dataset's
# JSON again only to find every verdict in the cache.
_PASSED = set()
# Part of every cached verdict: a change of what is checked makes the old verdicts unknown.
_CHECK_VERSION = 1
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_FILE_ENDS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\0\0\0\0IEND\xaeB`\x82"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), which hold the image size.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Bytes read for a JPEG's header; a frame header further in is read by PIL.
_JPEG_HEAD_BYTES = 4096


def _ends_complete(f, image_format: Optional[str]) -> bool:
    """Whether the file ends as a complete file of its format does (False: unknown format)."""
    end = _FILE_ENDS.get(image_format)
    if end is None:
        return False
    f.seek(-len(end), os.SEEK_END)
    return f.read(len(end)) == end


def _jpeg_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) from a JPEG's frame header within ``head`` (the file's first bytes), or
    None: not a JPEG, no frame header there, or an Exif segment (which may rotate the image)."""
    if not head.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 <= len(head):
        if head[position] != 0xFF:
            return None
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", head, position + 5)
            return height, width
        if marker == 0xE1 and head[position + 4 : position + 10] == b"Exif\0\0":
            return None
        position += 2 + struct.unpack_from(">H", head, position + 2)[0]
    return None


def _image_size_and_mode(f, full: bool) -> Tuple[int, int, str]:
    """(height, width) of the image as it is read (after its EXIF rotation) and its PIL mode;
    with ``full``, the file is also checked to be complete."""
    size = _jpeg_size(f.read(_JPEG_HEAD_BYTES))
    if size is not None and (not full or _ends_complete(f, "JPEG")):
        return (*size, "RGB")  # a JPEG without Exif: its frame header is the size PIL reads
    f.seek(0)
    image = Image.open(f)
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    if full and not _ends_complete(f, image.format):
        image.load()
    return height, width, image.mode


def _image_problem(path: str, expected: Tuple[int, int], full: bool) -> Optional[str]:
    """What is wrong with the image file, or None (see the module for what is checked)."""
    if not PathManager.isfile(path):
        return f"Image file {path} does not exist"
    try:
        with PathManager.open(path, "rb") as f:
            height, width, mode = _image_size_and_mode(f, full)
    except _DECODE_ERRORS as e:
        return str(_unreadable(path, e))
    if mode in _UNSUPPORTED_MODES:
        return f"Image {path} has PIL mode {mode!r} ({_UNSUPPORTED_MODES[mode]}), not readable"
    if (height, width) != expected:
        return (
            f"Image {path} is {height}x{width} (HxW, after its EXIF rotation); its annotation "
            f"says {expected[0]}x{expected[1]}"
        )
    return None


def _png_header_size(path: str) -> Tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, or from PIL's header for another format."""
    with PathManager.open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return height, width
        f.seek(0)
        width, height = Image.open(f).size
        return height, width


def _png_problem(record: dict, zeros: Optional[np.ndarray]) -> Optional[str]:
    """What is wrong with the record's panoptic PNG, or None; ``zeros`` (see
    :func:`.panoptic_png.check_panoptic_png`) for a full check, None for its header only."""
    path = record["pan_seg_file_name"]
    try:
        if zeros is not None:
            check_panoptic_png(record, zeros)
            return None
        if not PathManager.isfile(path):
            return f"Panoptic PNG {path} of {_describe(record)} does not exist"
        size = _png_header_size(path)
    except (FileNotFoundError, PanopticDataError) as e:
        return str(e)
    except _DECODE_ERRORS as e:
        return str(_unreadable(path, e))
    if size != (record["height"], record["width"]):
        return (
            f"Panoptic PNG {path} of {_describe(record)} is {size[0]}x{size[1]} (HxW); its "
            f"annotation says {record['height']}x{record['width']}"
        )
    return None


def _verdict_keys(record: dict, mode: str) -> Tuple[Optional[bytes], Optional[bytes]]:
    """The cache keys of the record's image and PNG verdicts (see :mod:`.check_cache`)."""
    check = f"{mode}/{_CHECK_VERSION}"
    size = f"{record['height']}x{record['width']}"
    ids = sorted(s["id"] for s in record["segments_info"]) if mode == "full" else ""
    return (
        verdict_key(record["file_name"], check, size),
        verdict_key(record["pan_seg_file_name"], check, f"{size} {ids}"),
    )


def _check_one(record: dict, keys, zeros, known) -> Tuple[List[str], List[bytes]]:
    """(problems, keys of the files that passed) of one record; files with a known passing
    verdict are not read. ``zeros``: see :func:`_png_problem`."""
    problems, passed = [], []
    full = zeros is not None
    checks = (
        lambda: _image_problem(record["file_name"], (record["height"], record["width"]), full),
        lambda: _png_problem(record, zeros),
    )
    for key, check in zip(keys, checks):
        if key is not None and key in known:
            passed.append(key)
            continue
        problem = check()
        if problem is not None:
            problems.append(problem)
        elif key is not None:
            passed.append(key)
    return problems, passed


def _num_threads() -> int:
    """The cores this process may use (its affinity mask), shared among the processes of this
    machine in a multi-process run."""
    return max(len(os.sched_getaffinity(0)) // max(comm.get_local_size(), 1), 1)


def _error(dataset_name: str, mode: str, num_records: int, problems: List[str]) -> Exception:
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    share = "" if comm.get_world_size() == 1 else " (this process's share of the records)"
    return PanopticDataError(
        f"Dataset '{dataset_name}': {len(problems)} bad file(s) among {num_records} records"
        f"{share} (PANOPTIC_FPN_EXT.DATA_CHECK {mode!r}):\n  {listed}{more}"
    )


def check_records(
    records: Sequence[dict],
    dataset_name: str,
    mode: str = "full",
    cache_directory: Optional[str] = "default",
    num_threads: Optional[int] = None,
) -> None:
    """Check every file of a dataset's records (see the module).

    Args:
        records: the dataset's records, in the plugin's format.
        dataset_name: names the dataset in the error and the cache.
        mode: one of ``CHECK_MODES``.
        cache_directory: where verdicts are kept; "default": :func:`default_cache_directory`;
            None: no cache.
        num_threads: threads that check records; None: the usable cores (:func:`_num_threads`).
    Raises:
        PanopticDataError: a file is missing or bad; lists them.
        ValueError: an unknown mode.
    """
    if mode not in CHECK_MODES:
        raise ValueError(f"Dataset check mode {mode!r}; expected one of {CHECK_MODES}")
    if mode == "off":
        return
    start = time.perf_counter()
    records = records[comm.get_rank() :: comm.get_world_size()]
    if cache_directory == "default":
        cache_directory = default_cache_directory()
    cache = VerdictCache(dataset_name, cache_directory)
    known = cache.load()
    keys = [_verdict_keys(record, mode) for record in records]
    unknown = [(r, k) for r, k in zip(records, keys) if not (k[0] in known and k[1] in known)]
    threads = num_threads or _num_threads()
    largest = max((r["height"] * r["width"] for r, _ in unknown), default=0)
    zeros = np.zeros(largest, dtype=np.int32) if mode == "full" else None
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda item: _check_one(*item, zeros, known), unknown))
    problems = [p for result, _ in results for p in result]
    cache.update(known, {key for _, passed in results for key in passed})
    logger.info(
        f"Dataset check of '{dataset_name}' ({mode}): {len(records)} records, "
        f"{len(records) - len(unknown)} known from the cache, in "
        f"{time.perf_counter() - start:.1f} s on {threads} thread(s)"
    )
    if problems:
        raise _error(dataset_name, mode, len(records), problems)


def check_datasets(cfg, dataset_names: Iterable[str]) -> None:
    """:func:`check_dataset_files` as ``PANOPTIC_FPN_EXT.DATA_CHECK`` says. The hook of
    ``PanopticDatasetMapper.from_config`` (training) and of the evaluator builders: a
    ``DefaultTrainer`` with the README's two hooks checks its data there.

    Raises:
        PanopticDataError: as :func:`check_records`.
    """
    check_dataset_files(dataset_names, cfg.PANOPTIC_FPN_EXT.DATA_CHECK)


def check_dataset_files(dataset_names: Iterable[str], mode: str = "full") -> None:
    """Check the records of every named dataset of the plugin's format (``evaluator_type``
    "panoptic_fpn_ext"; others are left to their own loaders) once per process and mode.

    Args:
        dataset_names: registered datasets.
        mode: "full", "headers" or "off" (the values of ``PANOPTIC_FPN_EXT.DATA_CHECK``).
    Raises:
        PanopticDataError: as :func:`check_records`.
    """
    for name in dict.fromkeys(dataset_names):
        passed = (name, DatasetCatalog[name], mode)
        if mode == "off" or passed in _PASSED:
            continue
        if MetadataCatalog.get(name).get("evaluator_type") == EVALUATOR_TYPE:
            check_records(DatasetCatalog.get(name), name, mode)
        _PASSED.add(passed)
