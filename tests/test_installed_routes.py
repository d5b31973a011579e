"""Mistakes on the routes Detectron2 users take, run from the installed wheel outside the
repository (tests/installed.py): each is refused with a message naming what is wrong, before the
first training iteration or before any output file is written.

* Detectron2's ``DefaultTrainer`` with README's two hooks: class counts that do not match the
  dataset; weights that fill nothing of the backbone; fine-tuning weights summed up in the log.
* ``train_net.py`` (copied into the user's project): ``--eval-only`` with weights of another
  architecture or a torchvision ``state_dict``; ``--resume`` from a damaged run; a config given by
  name; the per-class PQ table in its log.
* The predict and export tools with weights that do not fit, and ``--allow-partial-weights``.
* Detectron2's ``lazyconfig_train_net.py`` with the packaged quick-start LazyConfig.
"""

import itertools
import json
import os
import re
import shutil

import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from file_snapshots import snapshot
from panoptic_fpn_ext.model_zoo import get_config
from test_installed import MAKE_MY_DATA, _check, readme_python_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_START = "quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
# my_data (tests/test_installed.py) has the quick-start classes: 3 things, 3 stuff + "things".
REGISTER_MY_DATA = """
import panoptic_fpn_ext
for split in ("train", "val"):
    panoptic_fpn_ext.register_coco_panoptic_dataset(
        f"my_{split}", f"my_data/{split}", f"my_data/panoptic_{split}",
        f"my_data/annotations/panoptic_{split}.json",
    )
"""
SMALL = [
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MIN_SIZE_TEST", "96", "OUTPUT_DIR", "out",
]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Checkpoints that do not fit the quick-start model (R18, 3 thing classes):

    * ``r50``: an R50 of the same narrow widths (only the stem's tensors fit);
    * ``torchvision``: torchvision's resnet18 ``state_dict`` (no key matches);
    * ``five_things``: the quick-start model with 5 thing classes (Detectron2's fine-tuning
      case: all but the RoI predictors fit).
    """
    import torchvision

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name, opts in (
        ("r50", ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.WIDTH_PER_GROUP", "16"]),
        ("five_things", ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]),
    ):
        cfg = get_config(QUICK_START)
        cfg.merge_from_list(opts)
        paths[name] = str(folder / f"{name}.pth")
        torch.save({"model": build_model(cfg).state_dict()}, paths[name])
    paths["torchvision"] = str(folder / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), paths["torchvision"])
    return paths


@pytest.fixture(scope="module")
def shapes_datasets(tmp_path_factory):
    """``DETECTRON2_DATASETS`` holding the bundled quick-start set (generated here, ~10 s)."""
    from panoptic_fpn_ext.data.builtin import SHAPES_DIR, SHAPES_SPLIT_SIZES
    from panoptic_fpn_ext.data.synthetic import ensure_shapes_dataset

    root = tmp_path_factory.mktemp("datasets")
    for split, count in SHAPES_SPLIT_SIZES.items():
        ensure_shapes_dataset(str(root / SHAPES_DIR), split, count)
    return str(root)


DEFAULT_TRAINER_MISTAKES = """
import torch
from detectron2.modeling import build_model
from panoptic_fpn_ext import model_zoo
from panoptic_fpn_ext.engine import WeightsMismatchError

def config(*opts):
    cfg = model_zoo.get_config("quick_start/panoptic_fpn_ext_R_18_shapes.yaml")
    cfg.merge_from_list(["DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
                         *SMALL, *opts])
    return cfg

for key, value in (("MODEL.ROI_HEADS.NUM_CLASSES", "1"), ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"),
                   ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2")):
    try:
        Trainer(config(key, value))
        print("TRAINER BUILT", key, value)
    except ValueError as e:
        print("REFUSED TRAINER", key, value, "|", e)
    cfg = config(key, value)
    try:
        Trainer.test(cfg, build_model(cfg))
        print("EVALUATED", key, value)
    except ValueError as e:
        print("REFUSED TEST", key, value, "|", e)

trainer = Trainer(config("MODEL.WEIGHTS", sys.argv[1]))
try:
    trainer.resume_or_load(resume=False)
    print("TORCHVISION LOADED")
except WeightsMismatchError as e:
    print("REFUSED WEIGHTS |", e)
trainer = Trainer(config("MODEL.WEIGHTS", sys.argv[2]))
trainer.resume_or_load(resume=False)
print("FINE-TUNING |", trainer.model.loaded_weights.summary())
"""


def test_default_trainer_refuses_class_counts_and_foreign_weights_before_training(
    installed_plugin, weights, tmp_path
):
    code = MAKE_MY_DATA + readme_python_block("### Training with Detectron2's `DefaultTrainer`")
    code += REGISTER_MY_DATA + f"import sys\nSMALL = {SMALL!r}\n" + DEFAULT_TRAINER_MISTAKES
    out = _check(
        installed_plugin.run(
            code, args=[weights["torchvision"], weights["five_things"]], cwd=str(tmp_path)
        )
    )
    refusals = {
        ("MODEL.ROI_HEADS.NUM_CLASSES", "1"): "needs 3 (its 3 thing classes)",
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"): "needs 4 (3 stuff classes + 1 'things'",
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"): "needs 4 (3 stuff classes + 1 'things'",
    }
    for (key, value), needs in refusals.items():
        for route, dataset in (("TRAINER", "my_train"), ("TEST", "my_val")):
            line = f"REFUSED {route} {key} {value} | Config key {key} = {value}, but dataset "
            assert f"{line}'{dataset}' {needs}" in out, out[-4000:]
    assert "REFUSED WEIGHTS | The weights loaded fill no tensor of the model's backbone" in out
    assert "Loaded 0 of 161 model tensors" in out
    fine_tuning = "Loaded 155 of 161 model tensors; 6 not loaded (absent from the checkpoint or "
    fine_tuning += "of another shape), by module: roi_heads.box_predictor 4/4, roi_heads.mask_head"
    assert f"FINE-TUNING | {fine_tuning}" in out
    assert fine_tuning in out.split("FINE-TUNING")[0], "the summary is not in Detectron2's log"
    metrics = tmp_path / "out" / "metrics.json"  # DefaultTrainer opens it when built
    assert not metrics.exists() or metrics.read_text() == "", "a training iteration ran"


def test_plain_get_cfg_gets_a_hint_and_model_zoo_get_cfg_takes_plugin_configs(installed_plugin):
    code = """
    import panoptic_fpn_ext
    from detectron2.config import get_cfg
    from panoptic_fpn_ext import model_zoo

    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml")
    cfg = model_zoo.get_cfg()
    cfg.merge_from_file(path)
    print("MERGED", cfg.MODEL.META_ARCHITECTURE)
    for attempt in (
        lambda: panoptic_fpn_ext.merge_config_file(get_cfg(), path),
        lambda: panoptic_fpn_ext.PanopticDatasetMapper(get_cfg(), is_train=True),
        lambda: panoptic_fpn_ext.build_evaluator(get_cfg(), "panoptic_fpn_ext_shapes_val"),
    ):
        try:
            attempt()
        except ValueError as e:
            print("HINT |", e)
    """
    out = _check(installed_plugin.run(code))
    assert "MERGED PanopticFPNExt" in out
    hints = [line for line in out.splitlines() if line.startswith("HINT |")]
    assert len(hints) == 3, out
    assert "Non-existent config key: MODEL.PANOPTIC_FPN_EXT" in hints[0]
    for hint in hints:
        assert "panoptic_fpn_ext.model_zoo.get_cfg()" in hint
        assert "add_panoptic_fpn_ext_config" in hint


def _user_project(installed_plugin, tmp_path):
    """The user's folder with a copy of train_net.py."""
    shutil.copy(os.path.join(ROOT, "train_net.py"), tmp_path / "train_net.py")
    return str(tmp_path)


CALL_TRAIN_NET = """
import sys
import train_net

for argv in json.loads(sys.argv[1]):
    try:
        train_net.main(train_net.argument_parser().parse_args(argv))
        print("RAN", argv)
    except Exception as e:
        print("ERROR", type(e).__name__, "|", str(e).replace("\\n", " "))
"""


def _run_train_net(installed_plugin, cwd, runs, env=None):
    """``train_net.main`` of the copied script for each argv of ``runs``; its output lines."""
    code = "import json\n" + CALL_TRAIN_NET
    result = installed_plugin.run(code, args=[json.dumps(runs)], cwd=cwd, env=env)
    return [line for line in _check(result).splitlines() if line.startswith(("RAN", "ERROR"))]


def test_train_net_eval_only_refuses_weights_that_do_not_fit(installed_plugin, weights, tmp_path):
    cwd = _user_project(installed_plugin, tmp_path)
    base = ["--config-file", QUICK_START, "--eval-only", "OUTPUT_DIR", "out"]
    runs = [
        base + ["MODEL.WEIGHTS", weights["r50"]],
        base + ["MODEL.WEIGHTS", weights["torchvision"]],
    ]
    r50, torchvision = _run_train_net(installed_plugin, cwd, runs)
    assert r50.startswith("ERROR WeightsMismatchError | MODEL.WEIGHTS = ")
    assert "does not fit the model: 80 of its 161 tensors were not loaded" in r50
    assert "first: backbone.bottom_up.res2.0.conv1.weight" in r50
    assert "--allow-partial-weights" in r50
    assert torchvision.startswith("ERROR WeightsMismatchError | The weights loaded fill no tensor")
    assert not os.path.exists(tmp_path / "out"), "something was written"


def _damaged_runs(folder):
    """Output folders of an interrupted run whose ``last_checkpoint`` is damaged in four ways;
    each also holds an intact ``model_0000003.pth``."""
    intact = {"model": {}, "iteration": 3}
    runs = {
        "empty": b"",
        "random": bytes(range(128, 256)),
        "system": b"/etc/hostname",
        "truncated": b"model_final.pth",
    }
    for name, tag in runs.items():
        run = folder / name
        run.mkdir()
        torch.save(intact, run / "model_0000003.pth")
        os.utime(run / "model_0000003.pth", (1e9, 1e9))  # older than model_final.pth
        (run / "last_checkpoint").write_bytes(tag)
        (run / "config.yaml").write_text("# the run's config\n")
    torch.save({"model": {"w": torch.zeros(1000)}, "iteration": 5}, folder / "final.pth")
    data = (folder / "final.pth").read_bytes()
    (folder / "truncated" / "model_final.pth").write_bytes(data[: len(data) // 2])
    return runs


def test_train_net_resume_from_a_damaged_run_names_the_tag_and_an_intact_checkpoint(
    installed_plugin, tmp_path
):
    cwd = _user_project(installed_plugin, tmp_path)
    (tmp_path / "runs").mkdir()
    runs = _damaged_runs(tmp_path / "runs")
    before = snapshot(tmp_path / "runs")
    argv = [["--config-file", QUICK_START, "--resume", "OUTPUT_DIR", f"runs/{r}"] for r in runs]
    lines = _run_train_net(installed_plugin, cwd, argv)
    problems = {
        "empty": "is empty",
        "random": "is not text (128 bytes that are not UTF-8)",
        "system": "names '/etc/hostname', which is not a file of runs/system",
        "truncated": "names runs/truncated/model_final.pth, which is a damaged zip archive",
    }
    assert len(lines) == len(problems), lines
    for (name, problem), line in zip(problems.items(), lines):
        tag = f"runs/{name}/last_checkpoint"
        assert line.startswith(f"ERROR ResumeError | --resume: {tag} {problem}"), line
        intact = f"runs/{name}/model_0000003.pth"
        assert f"can be loaded is {intact}: resume from it with --resume-from {intact}" in line
    assert snapshot(tmp_path / "runs") == before, "the refused runs wrote or changed files"


def test_train_net_takes_a_config_name_and_logs_the_per_class_table(
    installed_plugin, shapes_datasets, tmp_path
):
    cwd = _user_project(installed_plugin, tmp_path)
    argv = ["train_net.py", "--config-file", QUICK_START, "--eval-only"]
    argv += ["--allow-random-weights", "OUTPUT_DIR", "out"]
    env = installed_plugin.env(DETECTRON2_DATASETS=shapes_datasets)
    _check(installed_plugin.python(argv, cwd=cwd, env=env, timeout=600))
    log = (tmp_path / "out" / "eval_random_weights" / "log.txt").read_text()
    assert "Contents of args.config_file=" in log and "quick_start" in log
    heading = "Per-class panoptic quality of panoptic_fpn_ext_shapes_val:\n"
    table = re.search(re.escape(heading) + "(.*)", log, re.S)
    assert table, log[-3000:]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), table.group(1).splitlines()))
    names = [row.split("|")[1].strip() for row in rows[2:]]  # after the header and its rule
    assert names == ["circle", "square", "triangle", "sky", "ground", "water"], rows


def test_predict_and_export_refuse_weights_that_do_not_fit_unless_allowed(
    installed_plugin, weights, tmp_path
):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (96, 80), (120, 40, 200)).save(images / "a.png")
    predict = ["--config-file", QUICK_START, "--input", str(images), "--opts"]
    for name in ("r50", "torchvision"):
        out = tmp_path / f"predicted_{name}"
        args = predict[:4] + ["--output", str(out)] + predict[4:] + ["MODEL.WEIGHTS", weights[name]]
        result = installed_plugin.run_module("panoptic_fpn_ext.tools.predict", args=args)
        assert result.returncode != 0 and "WeightsMismatchError" in result.stderr, result.stderr
        assert not out.exists()
    export = ["--config-file", QUICK_START, "--output", str(tmp_path / "exported")]
    result = installed_plugin.run_module(
        "panoptic_fpn_ext.tools.export", args=export + ["--opts", "MODEL.WEIGHTS", weights["r50"]]
    )
    assert "WeightsMismatchError: MODEL.WEIGHTS = " in result.stderr, result.stderr[-3000:]
    assert "80 of its 161 tensors were not loaded" in result.stderr
    assert not (tmp_path / "exported").exists()

    out = tmp_path / "predicted_allowed"
    args = predict[:4] + ["--output", str(out), "--allow-partial-weights"] + predict[4:]
    args += ["MODEL.WEIGHTS", weights["five_things"]]
    result = installed_plugin.run_module("panoptic_fpn_ext.tools.predict", args=args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 of its 161 tensors were not loaded" in result.stdout + result.stderr
    assert [name.startswith("a_png_") for name in os.listdir(out / "panoptic_predictions")] == [True]


def _lazyconfig_train_net():
    import detectron2

    script = os.path.join(
        os.path.dirname(os.path.dirname(detectron2.__file__)), "tools", "lazyconfig_train_net.py"
    )
    if not os.path.isfile(script):
        pytest.skip("this detectron2 install has no tools/lazyconfig_train_net.py")
    return script


def _packaged(installed_plugin, name):
    return os.path.join(installed_plugin.target, "panoptic_fpn_ext", "model_zoo", "configs", name)


def _train_lazy_quick_start(installed_plugin, shapes_datasets, cwd, overrides):
    """Detectron2's lazyconfig_train_net.py on the packaged quick-start LazyConfig; its log."""
    config = _packaged(installed_plugin, "quick_start/panoptic_fpn_ext_R_18_shapes.py")
    argv = [_lazyconfig_train_net(), "--config-file", config, *overrides]
    env = installed_plugin.env(DETECTRON2_DATASETS=shapes_datasets)
    result = installed_plugin.python(argv, cwd=cwd, env=env, timeout=1800)
    return _check(result) + result.stderr


def _assert_yaml_route_evaluators(log):
    for task in ("panoptic_seg", "sem_seg", "bbox", "segm"):
        assert f"copypaste: Task: {task}" in log, (task, log[-3000:])
    assert "Per-class panoptic quality of panoptic_fpn_ext_shapes_val" in log


# Two iterations, then the evaluation of the 100 validation images (~40 s on 2 cores)
def test_lazy_quick_start_trains_on_the_bundled_data_and_evaluates_as_the_yaml_route(
    installed_plugin, shapes_datasets, tmp_path
):
    overrides = ["train.max_iter=2"]  # the schedule only: model, data and evaluators as shipped
    log = _train_lazy_quick_start(installed_plugin, shapes_datasets, str(tmp_path), overrides)
    _assert_yaml_route_evaluators(log)
    assert os.path.exists(tmp_path / "output" / "quick_start_lazy" / "model_final.pth")


# The full schedule, 1,100 iterations then the evaluation (10.5 min on 2 cores)
@pytest.mark.slow
def test_lazy_quick_start_runs_with_no_overrides(installed_plugin, shapes_datasets, tmp_path):
    log = _train_lazy_quick_start(installed_plugin, shapes_datasets, str(tmp_path), [])
    _assert_yaml_route_evaluators(log)
    pq = float(re.search(r"copypaste: (\d+\.\d+),", log.split("Task: panoptic_seg")[1]).group(1))
    print(f"PQ of the LazyConfig quick start, no overrides: {pq}")  # shown with pytest -s
    assert pq > 50, f"PQ {pq} after the full quick-start schedule"
