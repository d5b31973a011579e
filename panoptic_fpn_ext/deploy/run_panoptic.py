"""Run an exported panoptic model on images; write COCO-panoptic PNGs and a JSON file.

    python run_panoptic.py --artifact model.pt2 --input IMAGES_OR_DIRS... --output OUT_DIR
        [--device cpu|cuda]

Needs torch and torchvision only (torchvision for its NMS and ROIAlign operators, which the
program calls, and to decode the input images); it imports nothing from Detectron2 or
panoptic_fpn_ext, and is meant to be copied next to the artifact. Each image is resized as
Detectron2's ``ResizeShortestEdge`` does at test time (with torch's antialiased bilinear
resize, which is close to but not bit-identical with the PIL resize Detectron2 uses); an image
already at that size is not resized. The panoptic map is resized back to the image's size
(nearest neighbour). Writes ``OUT_DIR/panoptic_predictions/<image stem>.png`` (segment ids as
``R + 256 G + 256^2 B``, PNG written with zlib) and ``OUT_DIR/panoptic_predictions.json``
(``{"annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id",
"isthing", "score" (things), "area"}]}], "categories": [...]}``), each file atomically.
"""

import argparse
import json
import os
import struct
import sys
import tempfile
import zlib
from typing import Dict, List, Tuple

import torch
import torchvision  # noqa: F401  (registers torchvision::nms and torchvision::roi_align)
from torch.nn import functional as F
from torchvision.io import ImageReadMode, decode_image, read_file

METADATA_FILE = "panoptic_metadata.json"  # the name used by panoptic_fpn_ext.deploy.export
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def load_artifact(path: str, device: str) -> Tuple[torch.nn.Module, Dict]:
    """The program (as a callable module) and its metadata.

    Raises:
        ValueError: not an artifact of panoptic_fpn_ext, or exported for another device.
    """
    extra = {METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path}: no {METADATA_FILE} inside; not a panoptic_fpn_ext artifact")
    metadata = json.loads(extra[METADATA_FILE])
    if torch.device(device).type != torch.device(metadata["device"]).type:
        raise ValueError(
            f"{path} was exported for {metadata['device']!r}, not {device!r}: export it again "
            f"with MODEL.DEVICE {device}"
        )
    return program.module(), metadata


def test_size(height: int, width: int, short: int, longest: int) -> Tuple[int, int]:
    """Detectron2's ``ResizeShortestEdge.get_output_shape``: (new height, new width)."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > longest:
        scale = longest / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def read_image(path: str, input_format: str) -> torch.Tensor:
    """uint8 (3, H, W) in ``input_format`` ("RGB" or "BGR")."""
    image = decode_image(read_file(path), mode=ImageReadMode.RGB)
    return image.flip(0) if input_format == "BGR" else image


def model_input(image: torch.Tensor, metadata: Dict, path: str) -> torch.Tensor:
    """float32 (3, h, w) at the test size, checked against the artifact's size range."""
    height, width = image.shape[1:]
    size = test_size(height, width, metadata["min_size_test"], metadata["max_size_test"])
    image = image.float()
    if size != (height, width):
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
    low, high = metadata["min_side"], metadata["max_side"]
    if not all(low <= side <= high for side in size):
        raise ValueError(f"{path}: test size {size} is outside the artifact's [{low}, {high}]")
    return image


def png_bytes(rgb: torch.Tensor) -> bytes:
    """An 8-bit RGB PNG of uint8 (H, W, 3), unfiltered rows, zlib-compressed."""
    height, width = rgb.shape[:2]
    rows = torch.cat([torch.zeros((height, 1), dtype=torch.uint8), rgb.reshape(height, -1)], 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.numpy().tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def id_map_rgb(panoptic: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) COCO-panoptic colours of an integer (H, W) id map."""
    ids = panoptic.long()
    return torch.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], dim=-1).to(torch.uint8)


def segments_info(outputs: Tuple[torch.Tensor, ...], areas: torch.Tensor, categories) -> List:
    """JSON segments of one image, with the dataset's category ids."""
    _, ids, category, is_thing, score, _ = outputs
    dataset_id = {(c["contiguous"], bool(c["isthing"])): c["id"] for c in categories}
    info = []
    for i, c, thing, s in zip(ids.tolist(), category.tolist(), is_thing.tolist(), score.tolist()):
        segment = {"id": i, "category_id": dataset_id.get((c, thing), c), "isthing": thing}
        if thing:
            segment["score"] = s
        segment["area"] = int(areas[i])
        info.append(segment)
    return info


def predict(program, metadata: Dict, path: str, device: str):
    """The int32 (H, W) id map at the image's size, and its JSON segments."""
    image = read_image(path, metadata["input_format"])
    with torch.no_grad():
        outputs = tuple(o.cpu() for o in program(model_input(image, metadata, path).to(device)))
    panoptic = outputs[0]
    if panoptic.shape != image.shape[1:]:
        resized = F.interpolate(panoptic[None, None].float(), size=image.shape[1:], mode="nearest")
        panoptic = resized[0, 0].int()
    areas = torch.bincount(panoptic.flatten().long(), minlength=len(outputs[1]) + 1)
    return panoptic, segments_info(outputs, areas, metadata["categories"])


def list_images(inputs: List[str]) -> List[str]:
    """Image files named in ``inputs`` (files, or folders searched one level)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(item, n) for n in names]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    return paths


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="the .pt2 file")
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    program, metadata = load_artifact(args.artifact, args.device)
    png_dir = os.path.join(args.output, "panoptic_predictions")
    os.makedirs(png_dir, exist_ok=True)
    annotations = []
    for path in list_images(args.input):
        panoptic, info = predict(program, metadata, path, args.device)
        stem = os.path.splitext(os.path.basename(path))[0]
        write_atomically(os.path.join(png_dir, stem + ".png"), png_bytes(id_map_rgb(panoptic)))
        annotations.append({"image_id": stem, "file_name": stem + ".png", "segments_info": info})
    categories = [
        {"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in metadata["categories"]
    ]
    data = {"annotations": annotations, "categories": categories}
    write_atomically(png_dir + ".json", json.dumps(data).encode())
    print(f"Wrote {len(annotations)} predictions to {png_dir}.json and {png_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
