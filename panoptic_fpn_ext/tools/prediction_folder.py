"""The predict tool's output folder: each image's PNG (and visualisation) written by a
background thread, and a JSON file that lists exactly the PNGs present.

The deployed runner writes the same layout (``panoptic_fpn_ext/deploy/run_panoptic.py``,
which imports nothing of this package; ``tests/test_inference_contract.py`` holds the two to
the same contract).
"""

import io
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ..data import id2rgb
from ..evaluation import PanopticExporter
from ..file_io import atomic_write

__all__ = ["PredictionFolder", "earlier_outputs", "VISUALIZATIONS"]

VISUALIZATIONS = "visualizations"
# The JSON is rewritten at most this often while images are done (and always at the end), so a
# long run does not rewrite a growing file after every image.
JSON_REWRITE_SECONDS = 2.0
# Images handed to the writer thread and not yet written; more make the predicting thread wait,
# which bounds the memory they hold.
MAX_PENDING = 4


def earlier_outputs(output_dir: str) -> List[str]:
    """The prediction files an earlier run (of any of the plugin's tools) left in
    ``output_dir``."""
    found = []
    json_path = os.path.join(output_dir, "panoptic_predictions.json")
    if os.path.exists(json_path):
        found.append(json_path)
    for folder in ("panoptic_predictions", VISUALIZATIONS):
        path = os.path.join(output_dir, folder)
        if os.path.isdir(path) and os.listdir(path):
            found.append(path + os.sep)
    return found


class PredictionFolder:
    """PNGs, visualisations, and a JSON file that lists exactly the PNGs present."""

    def __init__(self, output_dir: str, dataset: str, metadata, visualize: bool):
        self.exporter = PanopticExporter("coco", output_dir, dataset, metadata)
        self.json_path = self.exporter.paths["json"]
        self.png_dir = self.exporter.paths["png_dir"]
        self.vis_dir = os.path.join(output_dir, VISUALIZATIONS)
        self.metadata = metadata
        self.visualize = visualize
        self._dataset_ids = {
            True: {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()},
            False: {v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()},
        }
        self.images: List[Dict[str, Any]] = []
        self.annotations: List[Dict[str, Any]] = []
        self._pending: deque = deque()
        self._writer = ThreadPoolExecutor(max_workers=1)
        self._written_at = 0.0

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

    def add(
        self,
        name: str,
        path: str,
        panoptic_seg: torch.Tensor,
        segments_info: Sequence[Dict],
        vis_image: Optional[np.ndarray],
    ) -> None:
        """Hand one image's outputs to the writer thread; list the images written so far.

        Args:
            panoptic_seg: int32 (H, W) at the image's size; segments_info: the model's.
            vis_image: uint8 RGB (H', W', 3) to draw on (the image fitted into the
                visualisation size), or None.
        """
        task = self._writer.submit(
            self._write, name, path, panoptic_seg.cpu().numpy(), segments_info, vis_image
        )
        self._pending.append(task)
        self._collect(block=len(self._pending) > MAX_PENDING)

    def flush(self) -> None:
        """Wait until every image handed over is written, and list them."""
        while self._pending:
            self._collect(block=True)

    def _collect(self, block: bool) -> None:
        """List the images whose files are written, in order (waiting for the oldest one if
        ``block``), and rewrite the JSON when it is due. A failed write raises here."""
        while self._pending and (block or self._pending[0].done()):
            image, annotation = self._pending.popleft().result()
            self.images.append(image)
            self.annotations.append(annotation)
            block = False
        if time.monotonic() - self._written_at >= JSON_REWRITE_SECONDS:
            self.write_json()

    def _write(self, name, path, panoptic: np.ndarray, segments_info, vis_image):
        """(Writer thread.) The PNG, then the visualisation; returns the JSON entries."""
        png = Image.fromarray(id2rgb(panoptic))
        # zlib level 1: several times faster than PIL's default 6; id maps still compress well
        atomic_write(os.path.join(self.png_dir, name + ".png"),
                     lambda f: png.save(f, format="PNG", compress_level=1))
        if vis_image is not None:
            self._save_visualization(name, vis_image, panoptic, segments_info)
        height, width = panoptic.shape
        image = {"id": name, "file_name": path, "height": height, "width": width}
        annotation = {
            "image_id": name,
            "file_name": name + ".png",
            "segments_info": self._json_segments(panoptic, segments_info),
        }
        return image, annotation

    def _json_segments(self, panoptic: np.ndarray, segments_info) -> List[Dict[str, Any]]:
        """{"id", "category_id" (the dataset's), "isthing", "score" (things), "area"}."""
        areas = np.bincount(panoptic.ravel(), minlength=len(segments_info) + 1)
        segments = []
        for s in segments_info:
            thing = bool(s["isthing"])
            category = self._dataset_ids[thing][s["category_id"]]
            segment = {"id": int(s["id"]), "category_id": category, "isthing": thing}
            if thing:
                segment["score"] = float(s["score"])
            segment["area"] = int(areas[s["id"]])
            segments.append(segment)
        return segments

    def write_json(self) -> None:
        self.exporter.finish(self.annotations, images=self.images)
        self._written_at = time.monotonic()

    def close(self) -> None:
        """Finish the images handed over (those not started are dropped), list the written ones,
        remove the files of any image not listed (one cut short), then write the JSON."""
        self._writer.shutdown(wait=True, cancel_futures=True)
        for task in self._pending:
            if task.done() and not task.cancelled() and task.exception() is None:
                image, annotation = task.result()
                self.images.append(image)
                self.annotations.append(annotation)
        self._pending.clear()
        listed = {entry["file_name"] for entry in self.annotations}
        for folder in (self.png_dir, self.vis_dir):
            for name in os.listdir(folder):
                if name not in listed:
                    os.remove(os.path.join(folder, name))
        self.write_json()

    def _save_visualization(self, name: str, rgb: np.ndarray, panoptic: np.ndarray, info) -> None:
        """Draw at the size of ``rgb`` (the map resized to it, nearest)."""
        height, width = rgb.shape[:2]
        if panoptic.shape != (height, width):
            rows = (np.arange(height) * panoptic.shape[0] // height)[:, None]
            cols = (np.arange(width) * panoptic.shape[1] // width)[None, :]
            panoptic = panoptic[rows, cols]
        drawn = Visualizer(rgb, self.metadata).draw_panoptic_seg(torch.from_numpy(panoptic), info)
        buffer = io.BytesIO()
        Image.fromarray(drawn.get_image()).save(buffer, format="PNG")
        path = os.path.join(self.vis_dir, name + ".png")
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
