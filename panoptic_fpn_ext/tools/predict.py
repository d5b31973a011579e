"""Panoptic predictions for images: COCO-panoptic PNG + JSON and a visualisation per image.

    python -m panoptic_fpn_ext.tools.predict --config-file CONFIG --input DIR_OR_FILES... \\
        --output OUT_DIR [--limit N] [KEY VALUE ...]    # e.g. MODEL.WEIGHTS model.pth

Writes ``OUT_DIR/panoptic_predictions.json`` + ``OUT_DIR/panoptic_predictions/<name>.png``
(COCO panoptic format, category ids of the dataset named by ``DATASETS.TEST[0]``, whose metadata
gives the class names) and ``OUT_DIR/visualizations/<name>.png``, each file written atomically.
"""

import argparse
import io
import os
from typing import List, Optional

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tqdm import tqdm

from ..config import add_panoptic_fpn_ext_config, merge_config_file, validate_config
from ..data import read_image_file
from ..evaluation import PanopticExporter
from ..file_io import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: List[str], limit: Optional[int]) -> List[str]:
    """Image files named in ``inputs`` (files, or folders searched one level), sorted per folder.

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
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not paths:
        raise FileNotFoundError(f"--input {inputs}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths[:limit] if limit else paths


def build_cfg(config_file: str, opts: List[str]):
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(opts)
    validate_config(cfg)
    cfg.freeze()
    return cfg


def save_visualization(path: str, image_bgr, panoptic_seg, segments_info, metadata) -> None:
    """Draw the panoptic segmentation over the image with Detectron2's Visualizer, as a PNG."""
    drawn = Visualizer(image_bgr[:, :, ::-1], metadata).draw_panoptic_seg(
        panoptic_seg.cpu(), segments_info
    )
    buffer = io.BytesIO()
    Image.fromarray(drawn.get_image()).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True)
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    dataset = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)
    predictor = DefaultPredictor(cfg)
    exporter = PanopticExporter("coco", args.output, dataset, metadata)
    vis_dir = os.path.join(args.output, "visualizations")
    os.makedirs(vis_dir, exist_ok=True)
    entries = []
    for path in tqdm(list_images(args.input, args.limit), desc="predict"):
        image = read_image_file(path, "BGR")
        panoptic_seg, segments_info = predictor(image)["panoptic_seg"]
        stem = os.path.splitext(os.path.basename(path))[0]
        entries.append(
            exporter.write({"image_id": stem, "file_name": path}, panoptic_seg, segments_info)
        )
        save_visualization(
            os.path.join(vis_dir, stem + ".png"), image, panoptic_seg, segments_info, metadata
        )
    exporter.finish(entries)
    print(f"Wrote {len(entries)} predictions to {exporter.paths['json']} and {vis_dir}")


if __name__ == "__main__":
    main()
