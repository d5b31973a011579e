"""The predict tool's inputs: which files, under which output names, decoded in data-loader
workers.

The deployed runner (``panoptic_fpn_ext/deploy/run_panoptic.py``) lists, names and decodes
images by the same rules without importing this package; ``tests/test_inference_contract.py``
holds the two to them.
"""

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_image_to_rgb
from PIL import Image

from ..data import PanopticDataError, read_image_file

__all__ = ["IMAGE_EXTENSIONS", "list_images", "output_name", "output_names", "ImageFiles"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(
    inputs: Sequence[str],
    limit: Optional[int],
    exclude: Optional[str] = None,
    ignored: Optional[List[str]] = None,
) -> List[str]:
    """Image files named in ``inputs``: files as named, folders searched recursively (sorted;
    ``exclude``, the output folder, is not searched); each file once, at most ``limit``.

    Args:
        ignored: files in the folders without an image extension are appended to it.
    Raises:
        FileNotFoundError: an input does not exist, or no image was found.
    """
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths += _images_in_folder(item, exclude, [] if ignored is None else ignored)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            hint = " (config overrides go after --opts)" if item.isupper() else ""
            raise FileNotFoundError(f"--input {item}: no such file or folder{hint}")
    if not paths:
        raise FileNotFoundError(f"--input {inputs}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    seen, unique = set(), []
    for path in paths:  # a file named twice (as itself and in its folder) is predicted once
        key = _normalised(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique[:limit] if limit else unique


def _images_in_folder(folder: str, exclude: Optional[str], ignored: List[str]) -> List[str]:
    paths = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if exclude is None or _normalised(os.path.join(parent, name)) != _normalised(exclude)
        )
        for name in sorted(files):
            is_image = name.lower().endswith(IMAGE_EXTENSIONS)
            (paths if is_image else ignored).append(os.path.join(parent, name))
    return paths


def _normalised(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def output_name(path: str) -> str:
    """The name of an image's outputs: ``<stem>_<extension>_<16 hex digits of the SHA-1 of its
    normalised absolute path>`` (``a/img.jpg`` -> ``img_jpg_1f3c...``). It depends on nothing
    but the path, so it is the same in every run, whatever else is predicted."""
    absolute = _normalised(path)
    stem, extension = os.path.splitext(os.path.basename(absolute))
    digest = hashlib.sha1(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{stem}_{extension.lstrip('.')}_{digest}"


def output_names(paths: Sequence[str]) -> Dict[str, str]:
    """{path: output name}.

    Raises:
        ValueError: two paths get one name (a SHA-1 prefix collision); both are named.
    """
    names = {path: output_name(path) for path in paths}
    first: Dict[str, str] = {}
    for path, name in names.items():
        other = first.setdefault(name, path)
        if other != path:
            raise ValueError(f"--input images {other} and {path} would both be written as {name}")
    return names


class ImageFiles(torch.utils.data.Dataset):
    """Images decoded and resized as ``DefaultPredictor`` does (``read_image_file``, then
    ``ResizeShortestEdge`` at test size), in data-loader workers.

    Each item: {"path", "image": float32 (3, h, w) at the test size, "height", "width" (the
    image's size), "vis": uint8 RGB (H', W', 3) fitted into ``vis_max_side`` or None}, or
    {"path", "error": why it cannot be predicted}.
    """

    def __init__(
        self,
        paths: Sequence[str],
        input_format: str,
        min_size: int,
        max_size: int,
        vis_max_side: Optional[int],
    ):
        self.paths = list(paths)
        self.input_format = input_format
        self.resize = T.ResizeShortestEdge([min_size, min_size], max_size)
        self.test_size = (min_size, max_size)
        self.vis_max_side = vis_max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.paths[index]
        try:
            image = read_image_file(path, self.input_format)
        except (OSError, PanopticDataError) as e:
            return {"path": path, "error": str(e)}
        height, width = image.shape[:2]
        if min(T.ResizeShortestEdge.get_output_shape(height, width, *self.test_size)) < 1:
            reason = f"its test size would have a side below 1 pixel ({height}x{width})"
            return {"path": path, "error": reason}
        resized = self.resize.get_transform(image).apply_image(image)
        return {
            "path": path,
            "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
            "height": height,
            "width": width,
            "vis": self._visualization_image(image),
        }

    def _visualization_image(self, image: np.ndarray) -> Optional[np.ndarray]:
        if self.vis_max_side is None:
            return None
        rgb = Image.fromarray(np.ascontiguousarray(convert_image_to_rgb(image, self.input_format)))
        scale = min(1.0, self.vis_max_side / max(rgb.size))
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.BILINEAR)
        return np.asarray(rgb)


def as_is(item: Any) -> Any:
    """The data loader's collate function: items pass unchanged (picklable for workers)."""
    return item
