"""Panoptic predictions for images: COCO-panoptic PNG + JSON, and a visualisation, per image.

    python -m panoptic_fpn_ext.tools.predict --config-file CONFIG --input FILES_OR_FOLDERS... \\
        --output OUT_DIR [--vis | --no-vis] [--batch-size N] [--parallel N] [--workers N] \\
        [--limit N] [--confidence-threshold T] [--dataset NAME] [--import MODULE] [--overwrite] \\
        [--opts KEY VALUE ...]

It keeps the contract every inference tool of the plugin keeps (README "Predicting: one
contract for every tool"; the deployed runner ``run_panoptic.py`` keeps it too):

* Folders are searched recursively (the output folder excluded); files there without an image
  extension are ignored and named in the summary. An image that cannot be read is skipped and
  named in the summary, and the exit status is 1.
* ``OUT_DIR/panoptic_predictions/<name>.png``, ``OUT_DIR/visualizations/<name>.png`` (unless
  ``--no-vis``) and ``OUT_DIR/panoptic_predictions.json`` (``images``, ``annotations`` whose
  ``segments_info`` are ``{"id", "category_id", "isthing", "score" (things), "area"}``,
  ``categories``), each file written atomically. ``<name>`` is ``<stem>_<extension>_<16 hex
  digits of the SHA-1 of the image's absolute path>``: unique, and the same for a path in every
  run. It is the entry's ``image_id``; ``images`` maps it back to the input path.
* The JSON lists exactly the PNGs present: it is rewritten as images are done and whenever the
  run stops (an error, Ctrl-C, SIGTERM), and the files of an image not yet listed are removed.
  Only a SIGKILL can leave PNGs the JSON does not list (those of the last seconds). An
  ``OUT_DIR`` that holds earlier predictions is refused unless ``--overwrite`` is given.

Images are decoded and resized in data-loader workers (``--workers``, default
``DATALOADER.NUM_WORKERS``), predicted in batches of up to ``--batch-size`` consecutive images
of one test size (default 4 on CPU, 1 on CUDA), ``--parallel`` batches at a time (default 2 on
CPU, 1 on CUDA), each in its own thread with its share of the torch threads, and written by a
background thread. Batches and fewer torch threads per image round differently from
``DefaultPredictor``, so a pixel on a rounding boundary can change; with ``--parallel 1
--batch-size 1`` the outputs are ``DefaultPredictor``'s. Visualisations (``--vis``, the
default) are drawn at most ``--vis-max-side`` pixels on their longer side (default 1024), which
bounds their time and memory.
"""

import argparse
import logging
import os
import signal
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from ..engine.weights import build_inference_model
from .common import (
    add_config_arguments,
    build_cfg,
    check_weights,
    import_user_modules,
    parse_arguments,
)
from .image_inputs import IMAGE_EXTENSIONS, ImageFiles, as_is, list_images, output_names
from .prediction_folder import PredictionFolder, earlier_outputs

__all__ = ["main", "build_cfg", "list_images"]

logger = logging.getLogger("panoptic_fpn_ext.tools.predict")  # also when run as __main__


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


def _batches(items, batch_size: int, skipped: List[Tuple[str, str]]):
    """Consecutive readable items of one test size, ``batch_size`` at most per list; items
    with an error go to ``skipped`` (path, reason)."""
    batch: List[Dict] = []
    for item in items:
        if "error" in item:
            logger.error(f"Skipped {item['path']}: {item['error']}")
            skipped.append((item["path"], item["error"]))
            continue
        if batch and (len(batch) == batch_size or item["image"].shape != batch[0]["image"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """``torch.set_num_threads(count)`` meanwhile (it is global to the process)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _predict(model: torch.nn.Module, batch: List[Dict]) -> List[Dict]:
    """The model's outputs for a batch of loader items (in a predicting thread)."""
    inputs = [{k: item[k] for k in ("image", "height", "width")} for item in batch]
    with torch.no_grad():
        return model(inputs)


def predict_all(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    folder: PredictionFolder,
    names: Dict[str, str],
    batch_size: int,
    parallel: int,
) -> List[Tuple[str, str]]:
    """Predict every image of ``loader`` into ``folder``, ``parallel`` batches at once (each
    in its own thread, with the torch threads shared out); returns (path, reason) of each image
    skipped."""
    skipped: List[Tuple[str, str]] = []
    items = iter(loader)  # starts the workers before SIGTERM is caught: they keep its default
    pool = ThreadPoolExecutor(max_workers=parallel)
    in_flight: deque = deque()
    threads = max(1, torch.get_num_threads() // parallel)
    with _sigterm_as_exit(), _torch_threads(threads):
        try:
            progress = tqdm(total=len(loader), desc="predict")
            for batch in _batches(items, batch_size, skipped):
                in_flight.append((batch, pool.submit(_predict, model, batch)))
                while len(in_flight) > parallel or (in_flight and in_flight[0][1].done()):
                    _hand_over(folder, names, progress, *in_flight.popleft())
            while in_flight:
                _hand_over(folder, names, progress, *in_flight.popleft())
            folder.flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            folder.close()
    return skipped


def _hand_over(folder: PredictionFolder, names: Dict[str, str], progress, batch, task) -> None:
    """Give the outputs of a predicted batch to the output folder, in input order."""
    for item, output in zip(batch, task.result()):
        panoptic_seg, segments_info = output["panoptic_seg"]
        folder.add(names[item["path"]], item["path"], panoptic_seg, segments_info, item["vis"])
    progress.update(len(batch))


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m panoptic_fpn_ext.tools.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--vis", action=argparse.BooleanOptionalAction, default=True,
        help="write visualisations (default: --vis)",
    )
    parser.add_argument(
        "--vis-max-side", type=int, default=1024,
        help="visualisations are drawn at most this many pixels on their longer side",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="images per model call (consecutive images of one test size; default 4 on CPU, "
        "1 on CUDA)",
    )
    parser.add_argument(
        "--parallel", type=int, default=None,
        help="batches predicted at once, each in its own thread with its share of the torch "
        "threads (default: 2 on CPU, 1 on CUDA)",
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="data-loader processes that decode images (default: DATALOADER.NUM_WORKERS)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace earlier predictions in --output"
    )
    add_config_arguments(parser)
    return parse_arguments(parser, argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool; returns the exit status (0: all predicted, 1: some images skipped).

    Every check (config, dataset, weights, inputs, output folder) runs before anything is written.
    """
    args = parse_args(argv)
    setup_logger(name="panoptic_fpn_ext")
    import_user_modules(args.imports)
    cfg = build_cfg(args.config_file, args.opts, args.dataset, args.confidence_threshold)
    check_weights(cfg)
    ignored: List[str] = []
    images = list_images(args.input, args.limit, args.output, ignored)
    names = output_names(images)
    earlier = earlier_outputs(args.output)
    if earlier and not args.overwrite:
        raise FileExistsError(
            f"--output {args.output} holds earlier predictions ({', '.join(earlier)}); pass "
            "--overwrite to replace them, or choose another --output"
        )
    model = build_inference_model(cfg, allow_partial=args.allow_partial)
    dataset = cfg.DATASETS.TEST[0]
    folder = PredictionFolder(args.output, dataset, MetadataCatalog.get(dataset), args.vis)
    folder.clear()
    loader = _data_loader(cfg, images, args)
    on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    parallel = args.parallel or (1 if on_cuda else 2)
    batch_size = args.batch_size or (1 if on_cuda else 4)
    skipped = predict_all(model, loader, folder, names, batch_size, parallel)
    written = [folder.json_path, folder.png_dir + os.sep] + [folder.vis_dir + os.sep] * args.vis
    print(f"Predicted {len(folder.annotations)} of {len(images)} images: {', '.join(written)}")
    return print_summary(skipped, ignored)


def _data_loader(cfg, images: Sequence[str], args) -> torch.utils.data.DataLoader:
    workers = cfg.DATALOADER.NUM_WORKERS if args.workers is None else args.workers
    vis_max_side = args.vis_max_side if args.vis else None
    dataset = ImageFiles(
        images, cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, vis_max_side
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, collate_fn=as_is, num_workers=min(workers, len(images) - 1)
    )


def print_summary(skipped: List[Tuple[str, str]], ignored: List[str]) -> int:
    """Name what was skipped and why; returns the exit status (1 if an image was skipped)."""
    if ignored:
        print(
            f"Ignored {len(ignored)} file(s) in the input folders without an image extension "
            f"({', '.join(IMAGE_EXTENSIONS)}):",
            file=sys.stderr,
        )
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
