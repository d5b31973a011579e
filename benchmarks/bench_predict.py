"""Predicting a folder: images/s of the predict tool and of the deployed runner against a plain
``DefaultPredictor`` loop that writes the same PNG + JSON; the runner's start-up; a 4000x3000 JPEG.

    python benchmarks/bench_predict.py [--weights output/quick_start/model_final.pth]
        [--images 200] [--size 480 640] [--repeats 2] [--cache DIR]

The quick-start R18 model (``configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml``) with the
weights ``make demo`` trains (``--weights``), on ``--images`` synthetic "shapes" JPEGs of
``--size``. Every run is a fresh process timed from its start to its end, as a user runs it: the
reference loop (``DefaultPredictor``, Detectron2's ``read_image``, one COCO-panoptic PNG per
image and the JSON with the tools' fields at the end; this file's ``--reference-loop``), the
predict tool (``--no-vis``; its defaults, and one image at a time) and the runner (defaults: the
graph artifact the export tool writes next to it). The rounds alternate the tools; medians.
Each is also run on the first image alone: its start-up. The predict tool's maps one image at a
time are checked equal to the reference's; the others (batches, one torch thread per image, the
runner's contiguous layout) are compared by pixel agreement. Start-up alternatives:
``torch.export.load`` of ``model.pt2`` vs the runner's ``load_graph_program``, each in a fresh
process. Memory: peak resident set of the process, and separately of its largest finished child
process (data-loader workers, or helper processes a library starts), predicting one 4000x3000
JPEG with and without visualisation, against
``DefaultPredictor`` plus Detectron2's ``Visualizer`` at full size (what the tool drew before).
The export (minutes) and the images are cached under ``--cache`` (a temporary folder).
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
from PIL import Image

from common import command_line, machine_description, update_benchmarks_md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
DEFAULT_WEIGHTS = "output/quick_start/model_final.pth"
RUNNER = os.path.join(ROOT, "panoptic_fpn_ext", "deploy", "run_panoptic.py")
# Runs a command (module or script) in this interpreter, then prints its peak resident set and
# that of its largest finished child process (e.g. a data-loader worker), in KiB.
LAUNCHER = """
import os, resource, runpy, sys
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
if kind == "script":  # as ``python script.py`` does
    sys.path.insert(0, os.path.dirname(target))
try:
    (runpy.run_module if kind == "-m" else runpy.run_path)(target, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
finally:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"PEAK_KIB {self_kib} {children_kib}", file=sys.stderr)
"""


def reference_loop(images: str, output: str, weights: str, vis: bool) -> None:
    """``DefaultPredictor`` on every image of ``images`` (sorted), writing what the tools write:
    a COCO-panoptic PNG per image and the JSON at the end (and, with ``vis``, Detectron2's
    visualisation at full size)."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    from panoptic_fpn_ext.evaluation.export import write_id_map_png, write_json
    from panoptic_fpn_ext.tools.common import build_cfg

    cfg = build_cfg(CONFIG, ["MODEL.WEIGHTS", weights])
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    to_dataset = {True: {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()},
                  False: {v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()}}
    os.makedirs(os.path.join(output, "panoptic_predictions"))
    annotations = []
    for name in sorted(os.listdir(images)):
        image = read_image(os.path.join(images, name), format="BGR")
        panoptic, info = predictor(image)["panoptic_seg"]
        ids = panoptic.numpy()
        stem = os.path.splitext(name)[0]
        write_id_map_png(os.path.join(output, "panoptic_predictions", stem + ".png"), ids)
        areas = np.bincount(ids.ravel(), minlength=len(info) + 1)
        segments = [{"id": s["id"], "category_id": to_dataset[s["isthing"]][s["category_id"]],
                     "isthing": s["isthing"], **({"score": s["score"]} if s["isthing"] else {}),
                     "area": int(areas[s["id"]])} for s in info]
        annotations.append({"image_id": stem, "file_name": stem + ".png",
                            "segments_info": segments})
        if vis:
            drawn = Visualizer(image[:, :, ::-1], metadata).draw_panoptic_seg(panoptic, info)
            Image.fromarray(drawn.get_image()).save(os.path.join(output, stem + "_vis.png"))
    write_json(os.path.join(output, "panoptic_predictions.json"), {"annotations": annotations})


def timed(command: List[str]) -> Dict[str, float]:
    """Wall seconds, peak KiB and largest child's peak KiB of ``command`` (a LAUNCHER command
    line)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peak, child_peak = map(int, result.stderr.rsplit("PEAK_KIB", 1)[1].split()[:2])
    return {"seconds": seconds, "peak_kib": peak, "child_peak_kib": child_peak}


def commands(tool: str, images: str, output: str, args, artifact_dir: str,
             vis: bool = False) -> List[str]:
    """The LAUNCHER command line of one run of ``tool`` (visualisations only with ``vis``)."""
    launch = [sys.executable, "-c", LAUNCHER]
    if tool == "reference":
        return launch + ["script", __file__, "--reference-loop", images, output, args.weights] + (
            ["--vis"] if vis else [])
    if tool == "runner":
        return launch + ["script", os.path.join(artifact_dir, "run_panoptic.py"), "--input",
                         images, "--output", output]
    one_at_a_time = ["--parallel", "1", "--batch-size", "1"] if tool == "predict_one" else []
    return launch + ["-m", "panoptic_fpn_ext.tools.predict", "--config-file", CONFIG, "--input",
                     images, "--output", output, "--vis" if vis else "--no-vis", *one_at_a_time,
                     "--opts", "MODEL.WEIGHTS", args.weights]


def make_images(folder: str, count: int, size, seed: int = 0) -> str:
    """``count`` synthetic scenes as JPEGs in ``folder`` (kept if already complete)."""
    from panoptic_fpn_ext.data.synthetic import random_shapes_scene

    if os.path.isdir(folder) and len(os.listdir(folder)) == count:
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(random_shapes_scene(*size, rng)[0]).save(
            os.path.join(folder, f"{i:04d}.jpg"), quality=90
        )
    return folder


def exported(args) -> Dict:
    """The export tool's folder for ``--weights`` (cached, keyed by the weights and the sources
    of the export), and the seconds the export took (None when cached)."""
    digest = hashlib.sha1()
    for path in [args.weights, CONFIG] + sorted(
        os.path.join(ROOT, "panoptic_fpn_ext", "deploy", n)
        for n in os.listdir(os.path.join(ROOT, "panoptic_fpn_ext", "deploy")) if n.endswith(".py")
    ):
        with open(path, "rb") as f:
            digest.update(f.read())
    folder = os.path.join(args.cache, "export_" + digest.hexdigest()[:12])
    if os.path.isfile(os.path.join(folder, "model.graph")):
        return {"dir": folder, "seconds": None}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "panoptic_fpn_ext.tools.export", "--config-file",
                    CONFIG, "--output", folder, "--opts", "MODEL.WEIGHTS", args.weights],
                   cwd=ROOT, check=True, capture_output=True)
    return {"dir": folder, "seconds": time.perf_counter() - start}


def load_seconds(artifact: str) -> float:
    """Seconds to load ``artifact`` into a callable program in a fresh process (after
    ``import torch``): ``torch.export.load`` for a .pt2, else the runner's graph loader."""
    code = (
        "import sys, time, importlib.util, torch, torchvision\n"
        "spec = importlib.util.spec_from_file_location('r', sys.argv[1])\n"
        "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
        "t = time.perf_counter(); r.load_artifact(sys.argv[2], 'cpu')\n"
        "print(time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, RUNNER, artifact], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.split()[-1])


def compare(reference: str, other: str) -> Dict[str, float]:
    """Share of images with equal maps, and of pixels with equal ids, of two output folders."""
    ref = json.load(open(os.path.join(reference, "panoptic_predictions.json")))["annotations"]
    got = json.load(open(os.path.join(other, "panoptic_predictions.json")))
    by_path = {os.path.splitext(os.path.basename(i["file_name"]))[0]: i["id"]
               for i in got.get("images", [])}
    equal, pixels, total = 0, 0, 0
    for entry in ref:
        name = by_path.get(entry["image_id"], entry["image_id"])
        a = np.asarray(Image.open(os.path.join(reference, "panoptic_predictions",
                                               entry["file_name"])))
        b = np.asarray(Image.open(os.path.join(other, "panoptic_predictions", name + ".png")))
        equal += np.array_equal(a, b)
        pixels += int((a == b).all(axis=2).sum())
        total += a.shape[0] * a.shape[1]
    return {"images_equal": equal / len(ref), "pixels_equal": pixels / total}


def per_image_ms(artifact_dir: str, images: List[str], weights: str, repeats: int) -> Dict:
    """Median ms per image, in this process, alternating: ``DefaultPredictor`` (default config
    and contiguous layout) from a decoded image, and the runner's decode + resize + program."""
    import importlib.util

    import torch
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from common import alternating_medians
    from panoptic_fpn_ext.tools.common import build_cfg

    path = os.path.join(artifact_dir, "run_panoptic.py")
    spec = importlib.util.spec_from_file_location("r", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    program, metadata = runner.load_artifact(os.path.join(artifact_dir, "model.graph"), "cpu")
    predictors = [DefaultPredictor(build_cfg(CONFIG, ["MODEL.WEIGHTS", weights, *layout]))
                  for layout in ([], ["MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT", "contiguous"])]
    decoded = [read_image(path, format="BGR") for path in images]

    def run_program():
        for path in images:
            image, size = runner.model_input(path, metadata)
            with torch.no_grad():
                program(image, torch.empty((0, *size)))

    fns = [lambda p=p: [p(image) for image in decoded] for p in predictors] + [run_program]
    seconds = alternating_medians(fns, repeats=repeats)
    return {k: 1000 * s / len(images) for k, s in zip(("auto", "contiguous", "runner"), seconds)}


def large_image_runs(args, export_dir: str, tmp: str) -> Dict[str, Dict[str, float]]:
    """Seconds and peak KiB of each route on one 4000x3000 JPEG."""
    big = make_images(os.path.join(args.cache, "big_3000x4000"), 1, (3000, 4000), seed=1)
    routes = {
        "DefaultPredictor + full-size Visualizer": ("reference", True),
        "predict tool (`--vis`, the default)": ("predict", True),
        "predict tool `--no-vis`": ("predict", False),
        "runner": ("runner", False),
    }
    routes = {name: commands(tool, big, os.path.join(tmp, f"big_{tool}_{vis}"), args, export_dir,
                             vis) for name, (tool, vis) in routes.items()}
    return {name: timed(command) for name, command in routes.items()}


def measure(args) -> None:
    height, width = args.size
    os.makedirs(args.cache, exist_ok=True)
    folder = make_images(os.path.join(args.cache, f"images_{args.images}_{height}x{width}"),
                         args.images, args.size)
    first = os.path.join(args.cache, f"one_{height}x{width}")
    os.makedirs(first, exist_ok=True)
    shutil.copy(os.path.join(folder, sorted(os.listdir(folder))[0]), first)
    export = exported(args)
    tools = list(LABELS)
    runs = {tool: {"all": [], "one": []} for tool in tools}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.repeats):
            for k in range(len(tools)):
                tool = tools[(round_index + k) % len(tools)]
                for key, images in (("all", folder), ("one", first)):
                    out = os.path.join(tmp, f"{tool}_{key}_{round_index}")
                    command = commands(tool, images, out, args, export["dir"])
                    runs[tool][key].append(timed(command)["seconds"])
        reference = os.path.join(tmp, "reference_all_0")
        agreement = {t: compare(reference, os.path.join(tmp, f"{t}_all_0")) for t in tools[1:]}
        large = large_image_runs(args, export["dir"], tmp)
    startup = {name: statistics.median(load_seconds(os.path.join(export["dir"], name))
                                       for _ in range(2)) for name in ("model.pt2", "model.graph")}
    paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder))[:10]]
    per_image = per_image_ms(export["dir"], paths, args.weights, repeats=5)
    write_block(args, export, runs, agreement, startup, per_image, large)
    if agreement["predict_one"]["images_equal"] != 1.0:
        raise AssertionError(f"predict tool (one image at a time) maps differ from "
                             f"DefaultPredictor's: {agreement['predict_one']}")


LABELS = {
    "reference": "`DefaultPredictor` loop (reference)",
    "predict": "predict tool `--no-vis` (defaults: batches of 4, 2 at once)",
    "predict_one": "predict tool `--no-vis --parallel 1 --batch-size 1`",
    "runner": "runner (defaults: graph artifact, 2 images at once)",
}


def write_block(args, export, runs, agreement, startup, per_image, large) -> None:
    count = args.images
    rate = {t: count / statistics.median(r["all"]) for t, r in runs.items()}
    lines = [
        f"## Predicting a folder: R18 quick start, {count} images of {args.size[0]}x"
        f"{args.size[1]}, cpu",
        "",
        f"`{command_line()}` on {machine_description()}; weights `{args.weights}`; median of "
        f"{args.repeats} rounds, the tools alternating, each run a fresh process timed from its "
        "start to its end (model loading included). Export: "
        + ("cached" if export["seconds"] is None else f"{export['seconds']:.0f} s") + ".",
        "",
        "| route | images/s | / reference | 1 image (s) | per image after start-up (ms) "
        "| maps vs reference |",
        "|---|---|---|---|---|---|",
    ]
    for tool, label in LABELS.items():
        one, every = statistics.median(runs[tool]["one"]), statistics.median(runs[tool]["all"])
        steady = 1000 * (every - one) / (count - 1)
        maps = "-" if tool == "reference" else (
            "identical" if agreement[tool]["images_equal"] == 1 else
            f"{100 * agreement[tool]['images_equal']:.0f}% of images identical, "
            f"{100 * agreement[tool]['pixels_equal']:.3f}% of pixels")
        lines.append(f"| {label} | {rate[tool]:.2f} | {rate[tool] / rate['reference']:.2f}x "
                     f"| {one:.1f} | {steady:.1f} | {maps} |")
    lines += [
        "",
        f"Runner start-up, loading the program in a fresh process (after `import torch`): "
        f"`torch.export.load` of `model.pt2` {startup['model.pt2']:.2f} s, the graph artifact "
        f"`model.graph` {startup['model.graph']:.2f} s.",
        "",
        f"Per image in one process (10 images, median of 5 rounds alternating): "
        f"`DefaultPredictor` from a decoded image {per_image['auto']:.1f} ms (default config), "
        f"{per_image['contiguous']:.1f} ms (`MEMORY_FORMAT contiguous`, the exported layout); "
        f"the runner's decode + resize + program {per_image['runner']:.1f} ms "
        f"({per_image['runner'] / per_image['auto']:.2f}x the default `DefaultPredictor`).",
        "",
        "One 4000x3000 JPEG (fresh process each, wall time and peak resident memory):",
        "",
        "| route | seconds | peak MiB | largest child process, peak MiB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {r['seconds']:.1f} | {r['peak_kib'] / 1024:.0f} | "
              f"{r['child_peak_kib'] / 1024:.0f} |" for name, r in large.items()]
    worst = min(rate["predict"], rate["runner"]) / rate["reference"]
    met = "met" if worst >= 1.3 else "missed"
    lines += ["", f"Target: predict tool and runner (defaults) at least 1.3x the reference's "
              f"images/s: worst **{worst:.2f}x** ({met})."]
    update_benchmarks_md("predict-cpu", "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "bench_predict"))
    parser.add_argument("--reference-loop", nargs=3, metavar=("IMAGES", "OUTPUT", "WEIGHTS"))
    parser.add_argument("--vis", action="store_true", help="with --reference-loop")
    args = parser.parse_args()
    if args.reference_loop:
        reference_loop(*args.reference_loop, vis=args.vis)
        return
    measure(args)


if __name__ == "__main__":
    main()
