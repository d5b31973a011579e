"""Run an exported panoptic model on images; write COCO-panoptic PNGs and a JSON file.

    python run_panoptic.py --input IMAGES_OR_FOLDERS... --output OUT_DIR [--artifact FILE]
        [--overwrite] [--device cpu|cuda] [--workers N] [--parallel N]

Needs torch, torchvision (its NMS and ROIAlign operators, which the program calls), numpy and
Pillow; it imports nothing from Detectron2 or panoptic_fpn_ext, and is meant to be copied next to
the artifact (``--artifact`` defaults to ``model.graph`` there, else ``model.pt2``). It keeps
the contract of the plugin's predict tool (README "Predicting: one contract for every tool"):

* images are read as Detectron2's ``read_image`` reads them (EXIF orientation, grayscale,
  palette, alpha, 16-bit grayscale reduced to its high byte) and resized to the test size as
  ``ResizeShortestEdge`` resizes them (PIL, bilinear); the program pads a test size below its
  smallest padded side; the panoptic map comes out at the image's size;
* folders are searched recursively (the output folder excluded); files without an image
  extension there are ignored and named in the summary; an image that cannot be read is
  skipped, named in the summary, and the exit status is 1;
* ``<name>`` = ``<stem>_<extension>_<16 hex digits of the SHA-1 of the image's absolute
  path>``: unique, and the same for a path whatever else is in the run;
* ``OUT_DIR/panoptic_predictions/<name>.png`` (ids ``R + 256 G + 256^2 B``) and
  ``OUT_DIR/panoptic_predictions.json`` (``images``, ``annotations`` with ``segments_info``
  ``{"id", "category_id", "isthing", "score" (things), "area"}``, ``categories``), each file
  written atomically; the JSON lists exactly the PNGs present, also after an error, Ctrl-C or
  SIGTERM; an ``OUT_DIR`` holding earlier predictions is refused without ``--overwrite``.

Images are decoded ahead by ``--workers`` threads (default 2), predicted ``--parallel`` at a
time (default 2 on CPU, 1 on CUDA), each in its own thread with its share of the torch
threads, and their PNGs written by a background thread.
"""

import argparse
import hashlib
import io
import json
import math
import operator
import os
import signal
import sys
import time
import types
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torchvision  # noqa: F401  (registers torchvision::nms and torchvision::roi_align)
from PIL import Image

METADATA_FILE = "panoptic_metadata.json"  # the name used by panoptic_fpn_ext.deploy.export
GRAPH_FORMAT = "panoptic_fpn_ext graph program"  # panoptic_fpn_ext.deploy.graph_format
ARTIFACTS = ("model.graph", "model.pt2")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
JSON_NAME, PNG_DIR, VIS_DIR = "panoptic_predictions.json", "panoptic_predictions", "visualizations"
JSON_REWRITE_SECONDS = 2.0  # the JSON is rewritten at most this often while images are done
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {
    2: Image.FLIP_LEFT_RIGHT,
    3: Image.ROTATE_180,
    4: Image.FLIP_TOP_BOTTOM,
    5: Image.TRANSPOSE,
    6: Image.ROTATE_270,
    7: Image.TRANSVERSE,
    8: Image.ROTATE_90,
}
SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UNSUPPORTED_MODES = {"I": "32-bit integer", "F": "32-bit float"}
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# What the generated code of a graph program refers to (panoptic_fpn_ext.deploy.graph_format)
GRAPH_GLOBALS = {
    "torch": torch,
    "device": torch.device,
    "inf": math.inf,
    "nan": math.nan,
    "NoneType": type(None),
    "_operator": operator,
}


class UnreadableImage(ValueError):
    """An input image that cannot be decoded, or whose pixel values have no defined range."""


# ---- the artifact ----------------------------------------------------------------------------


def _graph_module(source: str, name: str) -> torch.nn.Module:
    module = torch.nn.Module()
    namespace = dict(GRAPH_GLOBALS)
    exec(compile(source, f"<{name or 'program'}>", "exec"), namespace)
    module.forward = types.MethodType(namespace["forward"], module)
    return module


def _attach(root: torch.nn.Module, path: str, value) -> None:
    """Set ``value`` (a module, or a tensor as a buffer) at the dotted ``path`` under ``root``,
    creating the modules on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, torch.nn.Module())
        root = getattr(root, part)
    if isinstance(value, torch.nn.Module):
        root.add_module(leaf, value)
    else:
        root.register_buffer(leaf, value)


def load_graph_program(path: str, device: str) -> Tuple[torch.nn.Module, Dict]:
    """A graph program (``model.graph``): the generated Python code of each of its graphs, and
    its tensors (panoptic_fpn_ext.deploy.graph_format)."""
    data = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != GRAPH_FORMAT:
        raise ValueError(f"{path}: not a panoptic_fpn_ext graph program")
    root = _graph_module(data["sources"][""], "")
    for name in sorted(data["sources"], key=len):  # parents first
        if name:
            _attach(root, name, _graph_module(data["sources"][name], name))
    for name, tensor in data["tensors"].items():
        _attach(root, name, tensor)
    return root, json.loads(data["metadata"])


def load_artifact(path: str, device: str) -> Tuple[torch.nn.Module, Dict]:
    """The program (as a callable module) and its metadata, from a ``.pt2`` file
    (``torch.export.load``) or a graph program.

    Raises:
        ValueError: not an artifact of panoptic_fpn_ext, or exported for another device.
    """
    if path.endswith(".pt2"):
        extra = {METADATA_FILE: ""}
        program = torch.export.load(path, extra_files=extra)
        if not extra[METADATA_FILE]:
            raise ValueError(f"{path}: no {METADATA_FILE} inside; not a panoptic_fpn_ext artifact")
        module, metadata = program.module(), json.loads(extra[METADATA_FILE])
    else:
        module, metadata = load_graph_program(path, device)
    if torch.device(device).type != torch.device(metadata["device"]).type:
        raise ValueError(
            f"{path} was exported for {metadata['device']!r}, not {device!r}: export it again "
            f"with --opts MODEL.DEVICE {device}"
        )
    return module, metadata


def default_artifact() -> str:
    """``model.graph`` next to this script, else ``model.pt2``."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join(here, name) for name in ARTIFACTS]
    return next((p for p in paths if os.path.isfile(p)), paths[-1])


# ---- images in -------------------------------------------------------------------------------


def _exif_transposed(image: Image.Image) -> Image.Image:
    """Detectron2's ``_apply_exif_orientation``."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # as Detectron2: an unreadable EXIF block leaves the image as it is
        return image
    method = EXIF_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def read_image(path: str, input_format: str) -> np.ndarray:
    """uint8 (H, W, 3) in ``input_format`` ("RGB" or "BGR"), as the plugin's
    ``read_image_file`` (Detectron2's ``read_image``) gives it.

    Raises:
        UnreadableImage: not an image, truncated or corrupt, or 32-bit integer/float pixels.
    """
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            if image.mode in UNSUPPORTED_MODES:
                raise UnreadableImage(
                    f"PIL mode {image.mode!r} ({UNSUPPORTED_MODES[image.mode]}), whose value "
                    "range is not defined; expected an 8-bit (or 16-bit grayscale) image"
                )
            sixteen_bit = image.mode in SIXTEEN_BIT_GRAY_MODES
            image = _exif_transposed(image)
            if sixteen_bit:
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
            rgb = np.asarray(image.convert("RGB"))
    except DECODE_ERRORS as e:
        raise UnreadableImage(f"{type(e).__name__}: {e} (is it truncated or corrupt?)") from e
    return rgb[:, :, ::-1] if input_format == "BGR" else rgb


def test_size(height: int, width: int, short: int, longest: int) -> Tuple[int, int]:
    """Detectron2's ``ResizeShortestEdge.get_output_shape``: (new height, new width)."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > longest:
        scale = longest / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def model_input(path: str, metadata: Dict) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """float32 (3, h, w) at the test size, and the image's (H, W).

    The test size is ``ResizeShortestEdge``'s, resized as ``ResizeTransform`` resizes uint8
    images (PIL, bilinear); a test size larger than the artifact's ``max_side`` is scaled down
    to it (then unlike Detectron2).

    Raises:
        UnreadableImage: see :func:`read_image`; or a test size with a side below 1 pixel.
    """
    image = read_image(path, metadata["input_format"])
    height, width = image.shape[:2]
    size = test_size(height, width, metadata["min_size_test"], metadata["max_size_test"])
    if max(size) > metadata["max_side"]:
        size = test_size(*size, min(size), metadata["max_side"])
    if min(size) < metadata["min_side"]:
        raise UnreadableImage(
            f"its test size would be {size[0]}x{size[1]}; the program takes sides from "
            f"{metadata['min_side']} (extreme aspect ratio)"
        )
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(size[::-1], Image.BILINEAR)
    chw = np.asarray(resized).transpose(2, 0, 1).astype("float32")
    return torch.from_numpy(chw), (height, width)


def list_images(inputs: List[str], exclude: str, ignored: List[str]) -> List[str]:
    """Image files named in ``inputs``: files as named, folders searched recursively (sorted;
    ``exclude``, the output folder, is not searched); each file once. Files in the folders
    without an image extension are appended to ``ignored``.

    Raises:
        FileNotFoundError: an input does not exist, or no image was found.
    """
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for folder, subfolders, files in os.walk(item):
                subfolders[:] = sorted(
                    d for d in subfolders if not _same_path(os.path.join(folder, d), exclude)
                )
                for name in sorted(files):
                    is_image = name.lower().endswith(IMAGE_EXTENSIONS)
                    (paths if is_image else ignored).append(os.path.join(folder, name))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            hint = " (config overrides go after --opts)" if item.isupper() else ""
            raise FileNotFoundError(f"--input {item}: no such file or folder{hint}")
    if not paths:
        raise FileNotFoundError(f"--input {inputs}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    unique = {os.path.normpath(os.path.abspath(p)): p for p in reversed(paths)}
    return [p for p in paths if unique.get(os.path.normpath(os.path.abspath(p))) is p]


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def output_name(path: str) -> str:
    """``<stem>_<extension>_<16 hex digits of the SHA-1 of the normalised absolute path>``."""
    absolute = os.path.normpath(os.path.abspath(path))
    stem, extension = os.path.splitext(os.path.basename(absolute))
    digest = hashlib.sha1(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{stem}_{extension.lstrip('.')}_{digest}"


# ---- predictions out -------------------------------------------------------------------------


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a new temporary file next to ``path`` (permissions from the umask),
    fsync it, then rename it over ``path``; on any error the temporary file is removed."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def id_map_png(panoptic: np.ndarray) -> bytes:
    """A COCO-panoptic RGB PNG of an integer (H, W) id map."""
    ids = panoptic.astype(np.int64)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def segments_info(outputs: Tuple[torch.Tensor, ...], categories: List[Dict]) -> List[Dict]:
    """JSON segments of one image, with the dataset's category ids."""
    dataset_id = {(c["contiguous"], bool(c["isthing"])): c["id"] for c in categories}
    rows = zip(*(o.tolist() for o in outputs[1:]))
    info = []
    for segment_id, category, is_thing, score, area in rows:
        segment = {"id": segment_id, "category_id": dataset_id[(category, is_thing)]}
        segment["isthing"] = is_thing
        if is_thing:
            segment["score"] = score
        segment["area"] = area
        info.append(segment)
    return info


def earlier_outputs(output_dir: str) -> List[str]:
    """The prediction files an earlier run (of any of the plugin's tools) left in
    ``output_dir``."""
    found = []
    if os.path.isfile(os.path.join(output_dir, JSON_NAME)):
        found.append(os.path.join(output_dir, JSON_NAME))
    for folder in (PNG_DIR, VIS_DIR):
        path = os.path.join(output_dir, folder)
        if os.path.isdir(path) and os.listdir(path):
            found.append(path + os.sep)
    return found


class PredictionFolder:
    """The output folder: PNGs written by a background thread, and a JSON file that lists
    exactly the PNGs present."""

    def __init__(self, output_dir: str, categories: List[Dict]):
        self.json_path = os.path.join(output_dir, JSON_NAME)
        self.png_dir = os.path.join(output_dir, PNG_DIR)
        self.categories = [{k: c[k] for k in ("id", "name", "isthing")} for c in categories]
        self.images: List[Dict] = []
        self.annotations: List[Dict] = []
        self.pending: deque = deque()
        self.writer = ThreadPoolExecutor(max_workers=1)
        self._written_at = 0.0

    def clear(self) -> None:
        """Delete earlier predictions (the JSON first, so that it never lists missing PNGs),
        then write an empty JSON."""
        if os.path.exists(self.json_path):
            os.remove(self.json_path)
        os.makedirs(self.png_dir, exist_ok=True)
        vis_dir = os.path.join(os.path.dirname(self.png_dir), VIS_DIR)
        for folder in (self.png_dir, vis_dir):
            for name in os.listdir(folder) if os.path.isdir(folder) else ():
                os.remove(os.path.join(folder, name))
        self.write_json()

    def add(self, name: str, path: str, panoptic: np.ndarray, info: List[Dict]) -> None:
        """Queue one image's PNG; list the images whose PNGs are written (at most 4 wait)."""
        image = {"id": name, "file_name": path, "height": panoptic.shape[0]}
        image["width"] = panoptic.shape[1]
        annotation = {"image_id": name, "file_name": name + ".png", "segments_info": info}
        png = os.path.join(self.png_dir, annotation["file_name"])
        task = self.writer.submit(lambda: write_atomically(png, id_map_png(panoptic)))
        self.pending.append((task, image, annotation))
        self._collect(block=len(self.pending) > 4)

    def flush(self) -> None:
        """Wait until every queued PNG is written, and list them."""
        while self.pending:
            self._collect(block=True)

    def _collect(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][0].done()):
            task, image, annotation = self.pending.popleft()
            task.result()  # a failed write raises here
            self.images.append(image)
            self.annotations.append(annotation)
            block = False
        if time.monotonic() - self._written_at >= JSON_REWRITE_SECONDS:
            self.write_json()

    def write_json(self) -> None:
        data = {"images": self.images, "annotations": self.annotations}
        data["categories"] = self.categories
        write_atomically(self.json_path, json.dumps(data).encode())
        self._written_at = time.monotonic()

    def close(self) -> None:
        """Finish the queued PNGs (those not started are dropped), list the written ones,
        remove any file not listed (an image cut short), and write the JSON."""
        self.writer.shutdown(wait=True, cancel_futures=True)
        for task, image, annotation in self.pending:
            if task.done() and not task.cancelled() and task.exception() is None:
                self.images.append(image)
                self.annotations.append(annotation)
        self.pending.clear()
        listed = {a["file_name"] for a in self.annotations}
        for name in os.listdir(self.png_dir):
            if name not in listed:
                os.remove(os.path.join(self.png_dir, name))
        self.write_json()


# ---- the run ---------------------------------------------------------------------------------


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _decoded(paths: List[str], metadata: Dict, threads: int):
    """(path, (input, size) or the UnreadableImage) per path, decoded ahead in threads."""
    window: deque = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path in paths:
            window.append((path, pool.submit(model_input, path, metadata)))
            if len(window) > 2 * threads:
                yield _result(*window.popleft())
        while window:
            yield _result(*window.popleft())


def _result(path, task):
    try:
        return path, task.result()
    except UnreadableImage as e:
        return path, e


def _run_program(program, decoded, device: str) -> Tuple[torch.Tensor, ...]:
    """The program's outputs (on the CPU) for one decoded image (in a predicting thread)."""
    image, (height, width) = decoded
    with torch.no_grad():
        outputs = program(image.to(device), torch.empty((0, height, width), device=device))
    return tuple(o.cpu() for o in outputs)


def predict_all(program, metadata: Dict, folder: PredictionFolder, paths, names, args):
    """Predict every image into ``folder``, ``args.parallel`` at once (each in its own thread,
    with the torch threads shared out); returns (path, reason) of each image skipped."""
    skipped = []
    pool = ThreadPoolExecutor(max_workers=args.parallel)
    in_flight: deque = deque()
    previous = (signal.signal(signal.SIGTERM, _stop_on_sigterm), torch.get_num_threads())
    torch.set_num_threads(max(1, previous[1] // args.parallel))
    try:
        for path, decoded in _decoded(paths, metadata, args.workers):
            if isinstance(decoded, UnreadableImage):
                print(f"Skipped {path}: {decoded}", file=sys.stderr)
                skipped.append((path, str(decoded)))
                continue
            in_flight.append((path, pool.submit(_run_program, program, decoded, args.device)))
            while len(in_flight) > args.parallel or (in_flight and in_flight[0][1].done()):
                _hand_over(folder, names, metadata, *in_flight.popleft())
        while in_flight:
            _hand_over(folder, names, metadata, *in_flight.popleft())
        folder.flush()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        folder.close()
        signal.signal(signal.SIGTERM, previous[0])
        torch.set_num_threads(previous[1])
    return skipped


def _hand_over(folder: PredictionFolder, names: Dict[str, str], metadata: Dict, path, task):
    outputs = task.result()
    info = segments_info(outputs, metadata["categories"])
    folder.add(names[path], path, outputs[0].numpy(), info)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=None, help=f"default: {' or '.join(ARTIFACTS)} "
                        "next to this script")
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier predictions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="threads that decode images")
    parser.add_argument("--parallel", type=int, default=None, help="images predicted at once, "
                        "each in its own thread (default: 2 on CPU, 1 on CUDA)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Run; returns the exit status (0: all predicted, 1: some images skipped). Inputs and
    output folder are checked before the artifact is loaded or anything is written."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.parallel = args.parallel or (1 if args.device.startswith("cuda") else 2)
    ignored: List[str] = []
    paths = list_images(args.input, args.output, ignored)
    names = {path: output_name(path) for path in paths}
    check_unique(names)
    earlier = earlier_outputs(args.output)
    if earlier and not args.overwrite:
        raise FileExistsError(
            f"--output {args.output} holds earlier predictions ({', '.join(earlier)}); pass "
            "--overwrite to replace them, or choose another --output"
        )
    program, metadata = load_artifact(args.artifact or default_artifact(), args.device)
    folder = PredictionFolder(args.output, metadata["categories"])
    folder.clear()
    skipped = predict_all(program, metadata, folder, paths, names, args)
    print(f"Predicted {len(folder.annotations)} of {len(paths)} images: {folder.json_path}, "
          f"{folder.png_dir}{os.sep}")
    return print_summary(skipped, ignored)


def check_unique(names: Dict[str, str]) -> None:
    """Raises ValueError naming two paths that would be written under one name."""
    first: Dict[str, str] = {}
    for path, name in names.items():
        other = first.setdefault(name, path)
        if other != path:
            raise ValueError(f"--input images {other} and {path} would both be written as {name}")


def print_summary(skipped: List[Tuple[str, str]], ignored: List[str]) -> int:
    """Name what was skipped and why; returns the exit status (1 if an image was skipped)."""
    if ignored:
        print(f"Ignored {len(ignored)} file(s) in the input folders without an image extension "
              f"({', '.join(IMAGE_EXTENSIONS)}):", file=sys.stderr)
        for path in ignored:
            print(f"  {path}", file=sys.stderr)
    if skipped:
        print(f"Skipped {len(skipped)} image(s) that could not be read:", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the outputs are consistent (see above); status 128 + 2
        sys.exit(130)
