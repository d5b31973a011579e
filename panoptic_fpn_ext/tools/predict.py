"""Panoptic predictions for images: COCO-panoptic PNG + JSON and a visualisation per image.

    python -m panoptic_fpn_ext.tools.predict --config-file CONFIG --input DIR_OR_FILES... \\
        --output OUT_DIR [--limit N] [--confidence-threshold T] [--dataset NAME] \\
        [--import MODULE] [--overwrite] [--opts KEY VALUE ...]

Writes ``OUT_DIR/panoptic_predictions.json`` (COCO panoptic: ``images``, ``annotations``,
``categories``), ``OUT_DIR/panoptic_predictions/<name>.png`` and
``OUT_DIR/visualizations/<name>.png``, each file written atomically:

* ``<name>`` is the image's path relative to the inputs' common folder, without extension, with
  ``/`` replaced by ``__``; images whose names would still coincide (``a/img.jpg``, ``a/img.png``)
  keep their extension as ``_jpg``/``_png``. It is the entry's ``image_id``; the ``images`` list
  gives each one's input path and size. Names that coincide after all this are refused before
  anything is written.
* Category ids and class names come from the metadata of the dataset named by ``--dataset`` or,
  by default, ``DATASETS.TEST[0]``. A model trained on a user's own dataset: ``--import
  my_project.datasets`` imports the module that registers it (run before the config is read).
* An image that cannot be read is reported and skipped; the rest are predicted, and the tool
  ends with a summary and exit status 1.
* The JSON lists exactly the PNGs present: it is rewritten (atomically) as images are done and
  whenever the run stops (an error, Ctrl-C, SIGTERM), and the files of an image not yet listed
  are removed. Only a SIGKILL can leave PNGs the JSON does not list (those written in the last
  few seconds), never the reverse. An ``OUT_DIR`` that holds earlier predictions is refused
  unless ``--overwrite`` is given; the old JSON is then deleted first.
* ``--confidence-threshold T`` sets both ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` and
  ``MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH`` (as Detectron2's demo does):
  instances scoring below T are not in the panoptic output.
* An empty ``MODEL.WEIGHTS`` predicts with random weights, with a warning.
"""

import argparse
import importlib
import io
import logging
import os
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tqdm import tqdm

from ..config import (
    add_panoptic_fpn_ext_config,
    merge_config_file,
    merge_config_list,
    validate_config,
)
from ..data import PanopticDataError, read_image_file
from ..engine.weights import ALLOW_PARTIAL_FLAG, check_inference_weights, resolve_weights
from ..evaluation import PanopticExporter
from ..file_io import atomic_write
from ..model_zoo import resolve_config_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Metadata the COCO-panoptic JSON needs (category ids and names).
REQUIRED_METADATA = (
    "thing_classes",
    "stuff_classes",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)
# The JSON is rewritten at most this often while images are done (and always at the end), so a
# long run does not rewrite a growing file after every image.
JSON_REWRITE_SECONDS = 2.0
VISUALIZATIONS = "visualizations"

logger = logging.getLogger("panoptic_fpn_ext.tools.predict")  # also when run as __main__


def list_images(inputs: List[str], limit: Optional[int]) -> List[str]:
    """Image files named in ``inputs`` (files, or folders searched one level), sorted per folder,
    each listed once.

    Raises:
        FileNotFoundError: an input does not exist, or no image was found.
    """
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(item, n) for n in names]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            hint = ""
            if item.isupper() and "." in item:
                hint = " (config overrides go after --opts: --opts KEY VALUE ...)"
            raise FileNotFoundError(f"--input {item}: no such file or folder{hint}")
    if not paths:
        raise FileNotFoundError(f"--input {inputs}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    seen, unique = set(), []
    for path in paths:  # a file named twice (as itself and in its folder) is predicted once
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique[:limit] if limit else unique


def output_names(paths: Sequence[str]) -> List[str]:
    """A distinct output name per image (see the module docstring), in the order of ``paths``.

    Raises:
        ValueError: two images still get the same name; both paths are named.
    """
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    stems, extensions = zip(*(os.path.splitext(os.path.relpath(p, root)) for p in absolute))
    names = [stem.replace(os.sep, "__") for stem in stems]
    shared = Counter(names)
    names = [
        f"{name}_{ext.lstrip('.')}" if shared[name] > 1 else name
        for name, ext in zip(names, extensions)
    ]
    first: Dict[str, str] = {}
    for name, path in zip(names, paths):
        other = first.setdefault(name, path)
        if other != path:
            raise ValueError(
                f"--input images {other} and {path} would both be written as {name}.png; "
                "rename one of them or predict them in separate runs"
            )
    return names


def import_user_modules(modules: Sequence[str]) -> None:
    """Import each module (e.g. the one that registers a user's datasets), naming a failing one."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"--import {module}: {e} (the module must be importable: on PYTHONPATH or in "
                f"the working directory)"
            ) from e


def build_cfg(
    config_file: str,
    opts: List[str],
    dataset: Optional[str] = None,
    confidence_threshold: Optional[float] = None,
) -> CfgNode:
    """The validated, frozen config of a prediction run.

    Args:
        config_file: the YAML: a path, or the name of one of the plugin's configs
            (``panoptic_fpn_ext.model_zoo``).
        opts: command-line ``KEY VALUE`` overrides.
        dataset: a registered dataset whose metadata names the classes (replaces DATASETS.TEST).
        confidence_threshold: sets MODEL.ROI_HEADS.SCORE_THRESH_TEST and
            MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH when given.
    Raises:
        ValueError: a bad key or value, naming it; the dataset is not registered.
    """
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, resolve_config_file(config_file))
    merge_config_list(cfg, opts)
    cfg.DATASETS.TRAIN = ()  # not used for prediction; its dataset may not be registered here
    if dataset is not None:
        cfg.DATASETS.TEST = (dataset,)
    if confidence_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    _check_prediction_dataset(cfg, dataset is not None)
    validate_config(cfg)
    cfg.freeze()
    return cfg


def _check_prediction_dataset(cfg: CfgNode, from_flag: bool) -> None:
    source = "--dataset" if from_flag else "Config key DATASETS.TEST"
    if not cfg.DATASETS.TEST:
        raise ValueError(
            "Config key DATASETS.TEST is empty, so no dataset metadata names the classes; pass "
            "--dataset NAME (a registered dataset, e.g. registered by --import MODULE)"
        )
    name = cfg.DATASETS.TEST[0]
    if name not in DatasetCatalog.list():
        raise ValueError(
            f"{source} names dataset '{name}', which is not registered; register it in a module "
            "passed with --import MODULE, or name a registered dataset with --dataset NAME"
        )
    metadata = MetadataCatalog.get(name)
    missing = [key for key in REQUIRED_METADATA if not hasattr(metadata, key)]
    if missing:
        raise ValueError(
            f"Dataset '{name}' ({source}) has no {', '.join(missing)} in its metadata; "
            "expected the separated panoptic metadata of register_coco_panoptic_dataset"
        )


def check_weights(cfg: CfgNode) -> None:
    """Resolve MODEL.WEIGHTS (downloading a URL), or warn loudly when it is empty.

    Raises:
        WeightsNotFoundError: the file does not exist or the URL cannot be fetched.
    """
    if cfg.MODEL.WEIGHTS:
        resolve_weights(cfg.MODEL.WEIGHTS)
    else:
        logger.warning(
            "MODEL.WEIGHTS is empty: predicting with RANDOMLY INITIALISED weights; the output is "
            "meaningless. Pass --opts MODEL.WEIGHTS path/or/url.pth"
        )


class PredictionFolder:
    """The output folder: PNGs, visualisations, and a JSON that lists exactly the PNGs present."""

    def __init__(self, output_dir: str, dataset: str, metadata):
        self.exporter = PanopticExporter("coco", output_dir, dataset, metadata)
        self.json_path = self.exporter.paths["json"]
        self.png_dir = self.exporter.paths["png_dir"]
        self.vis_dir = os.path.join(output_dir, VISUALIZATIONS)
        self.metadata = metadata
        self.images: List[Dict[str, Any]] = []
        self.annotations: List[Dict[str, Any]] = []
        self._written_at = 0.0

    @staticmethod
    def earlier_outputs(output_dir: str) -> List[str]:
        """The prediction files an earlier run left in ``output_dir``."""
        found = []
        json_path = os.path.join(output_dir, "panoptic_predictions.json")
        if os.path.exists(json_path):
            found.append(json_path)
        for folder in ("panoptic_predictions", VISUALIZATIONS):
            path = os.path.join(output_dir, folder)
            if os.path.isdir(path) and os.listdir(path):
                found.append(path + os.sep)
        return found

    def clear(self) -> None:
        """Delete earlier predictions (the JSON first, so it never lists missing PNGs), then write
        an empty JSON."""
        if os.path.exists(self.json_path):
            os.remove(self.json_path)
        os.makedirs(self.vis_dir, exist_ok=True)
        for folder in (self.png_dir, self.vis_dir):
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
        self.write_json()

    def add(self, name: str, path: str, image_bgr, panoptic_seg, segments_info) -> None:
        """Write one image's PNG and visualisation, then list it (the JSON follows, throttled)."""
        entry = self.exporter.write(
            # PanopticExporter names the PNG after the stem of "file_name": here, ``name``.
            {"image_id": name, "file_name": name + ".png"},
            panoptic_seg,
            segments_info,
        )
        self._save_visualization(name, image_bgr, panoptic_seg, segments_info)
        self.annotations.append(entry)
        height, width = image_bgr.shape[:2]
        self.images.append({"id": name, "file_name": path, "height": height, "width": width})
        if time.monotonic() - self._written_at >= JSON_REWRITE_SECONDS:
            self.write_json()

    def write_json(self) -> None:
        self.exporter.finish(self.annotations, images=self.images)
        self._written_at = time.monotonic()

    def close(self) -> None:
        """Remove the files of an image that was never listed (a run stopped mid-image), then
        write the JSON of every listed image."""
        listed = {entry["file_name"] for entry in self.annotations}
        for folder in (self.png_dir, self.vis_dir):
            for name in os.listdir(folder):
                if name not in listed:
                    os.remove(os.path.join(folder, name))
        self.write_json()

    def _save_visualization(self, name: str, image_bgr, panoptic_seg, segments_info) -> None:
        drawn = Visualizer(image_bgr[:, :, ::-1], self.metadata).draw_panoptic_seg(
            panoptic_seg.cpu(), segments_info
        )
        buffer = io.BytesIO()
        Image.fromarray(drawn.get_image()).save(buffer, format="PNG")
        path = os.path.join(self.vis_dir, name + ".png")
        atomic_write(path, lambda f: f.write(buffer.getvalue()))


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) meanwhile, so cleanup code runs (main thread only)."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def predict_all(
    predictor, folder: PredictionFolder, images: Sequence[str], names: Sequence[str]
) -> List[Tuple[str, str]]:
    """Predict every image into ``folder``; returns (path, error) of each image not readable."""
    failures = []
    with _sigterm_as_exit():
        try:
            for path, name in tqdm(list(zip(images, names)), desc="predict"):
                try:
                    image = read_image_file(path, "BGR")
                except (OSError, PanopticDataError) as e:
                    logger.error(f"Skipped {path}: {e}")
                    failures.append((path, str(e)))
                    continue
                panoptic_seg, segments_info = predictor(image)["panoptic_seg"]
                folder.add(name, path, image, panoptic_seg, segments_info)
        finally:
            folder.close()
    return failures


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m panoptic_fpn_ext.tools.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a config path, or the name of one of the plugin's configs "
        "(e.g. COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml)",
    )
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum instance score; sets MODEL.ROI_HEADS.SCORE_THRESH_TEST and "
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH (default: the config's)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="registered dataset whose metadata names the classes (default: DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (e.g. the code that registers your dataset); repeatable",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier predictions in --output"
    )
    parser.add_argument(
        ALLOW_PARTIAL_FLAG,
        dest="allow_partial",
        action="store_true",
        help="predict with weights that leave tensors of the model unloaded (refused otherwise)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides, KEY VALUE pairs, e.g. --opts MODEL.WEIGHTS model.pth",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool; returns the exit status (0: all predicted, 1: some images unreadable).

    Every check (config, dataset, weights, inputs, output folder) runs before anything is written.
    """
    args = parse_args(argv)
    setup_logger(name="panoptic_fpn_ext")
    import_user_modules(args.imports)
    cfg = build_cfg(args.config_file, args.opts, args.dataset, args.confidence_threshold)
    check_weights(cfg)
    images = list_images(args.input, args.limit)
    names = output_names(images)
    earlier = PredictionFolder.earlier_outputs(args.output)
    if earlier and not args.overwrite:
        raise FileExistsError(
            f"--output {args.output} holds earlier predictions ({', '.join(earlier)}); pass "
            "--overwrite to replace them, or choose another --output"
        )
    predictor = DefaultPredictor(cfg)
    check_inference_weights(predictor.model, cfg.MODEL.WEIGHTS, allow_partial=args.allow_partial)
    dataset = cfg.DATASETS.TEST[0]
    folder = PredictionFolder(args.output, dataset, MetadataCatalog.get(dataset))
    folder.clear()
    failures = predict_all(predictor, folder, images, names)
    print(
        f"Predicted {len(folder.annotations)} of {len(images)} images: {folder.json_path}, "
        f"{folder.png_dir}{os.sep}, {folder.vis_dir}{os.sep}"
    )
    if failures:
        print(f"{len(failures)} image(s) could not be read:", file=sys.stderr)
        for path, error in failures:
            print(f"  {path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
