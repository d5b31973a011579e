"""The plugin installed from its wheel, used from a folder outside the repository: README's
snippets, Detectron2's own DefaultTrainer with evaluation through its EvalHook, the LazyConfig,
and ``import`` + PNG decoding on a read-only install (see tests/installed.py)."""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small dataset in COCO panoptic format, where README's snippet expects "my_data".
MAKE_MY_DATA = """
from panoptic_fpn_ext.data.synthetic import load_shapes_dataset
for split, count in (("train", 8), ("val", 4)):
    load_shapes_dataset("my_data", split, count, (96, 96), seed=1)
"""
# The two splits of MAKE_MY_DATA registered as "my_train" and "my_val" (after README's snippet,
# which imports panoptic_fpn_ext).
REGISTER_MY_DATA = """
from panoptic_fpn_ext import model_zoo

for split in ("train", "val"):
    panoptic_fpn_ext.register_coco_panoptic_dataset(
        f"my_{split}", f"my_data/{split}", f"my_data/panoptic_{split}",
        f"my_data/annotations/panoptic_{split}.json",
    )
"""


def readme_python_block(heading: str) -> str:
    """The first ```python block of README.md after the line ``heading``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(f"\n{heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def test_readme_plugin_snippet_runs_from_the_installed_wheel(installed_plugin, tmp_path):
    code = MAKE_MY_DATA + readme_python_block("## Using it from another Detectron2 project")
    code += """
import sys
from detectron2.evaluation import DatasetEvaluators
assert panoptic_fpn_ext.__file__.startswith(sys.argv[1]), panoptic_fpn_ext.__file__
assert type(model).__name__ == "PanopticFPNExt"
assert isinstance(evaluator, DatasetEvaluators)
print("device", cfg.MODEL.DEVICE, [type(e).__name__ for e in evaluator._evaluators])
"""
    out = _check(installed_plugin.run(code, args=[installed_plugin.target], cwd=str(tmp_path)))
    assert "PanopticQualityEvaluator" in out and "COCOEvaluator" in out, out
    assert not os.path.exists(os.path.join(installed_plugin.target, "configs")), "configs leaked"


def test_wheel_carries_every_config_of_the_repository(installed_plugin):
    packaged = os.path.join(installed_plugin.target, "panoptic_fpn_ext", "model_zoo", "configs")
    names = lambda root: sorted(  # noqa: E731
        os.path.relpath(os.path.join(d, n), root)
        for d, _, files in os.walk(root)
        for n in files
        if n.endswith((".yaml", ".py"))
    )
    assert names(packaged) == names(os.path.join(ROOT, "configs"))
    assert not os.path.islink(packaged)


# Two iterations of R18, then PQ and box/mask AP through the EvalHook (~10 s on 2 cores)
def test_default_trainer_trains_and_evaluates_through_detectron2_hooks(installed_plugin, tmp_path):
    code = MAKE_MY_DATA + readme_python_block("### Training with Detectron2's `DefaultTrainer`")
    code += REGISTER_MY_DATA + """
import json
from detectron2.engine.hooks import EvalHook
cfg = model_zoo.get_config("quick_start/panoptic_fpn_ext_R_18_shapes.yaml")
cfg.merge_from_list([
    "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)", "SOLVER.MAX_ITER", "2",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
    "OUTPUT_DIR", "out", "PANOPTIC_FPN_EXT.EVAL.SEMANTIC_MIOU", "False",
])
trainer = Trainer(cfg)
assert any(isinstance(h, EvalHook) for h in trainer._hooks)
trainer.resume_or_load(resume=False)
trainer.train()
print("RESULTS", json.dumps(trainer._last_eval_results))
"""
    out = _check(installed_plugin.run(code, cwd=str(tmp_path)))
    results = __import__("json").loads(out.split("RESULTS ", 1)[1].splitlines()[0])
    assert {"PQ", "SQ", "RQ"} <= set(results["panoptic_seg"]), results
    assert os.path.exists(tmp_path / "out" / "model_final.pth")
    assert "Per-class panoptic quality of my_val:" in out  # the plugin's logger reaches the log


def test_default_mapper_stops_with_an_error_naming_the_panoptic_mapper(installed_plugin, tmp_path):
    code = MAKE_MY_DATA + """
import panoptic_fpn_ext
from detectron2.engine import DefaultTrainer
from panoptic_fpn_ext import model_zoo

panoptic_fpn_ext.register_coco_panoptic_dataset(
    "my_train", "my_data/train", "my_data/panoptic_train",
    "my_data/annotations/panoptic_train.json",
)
cfg = model_zoo.get_config("quick_start/panoptic_fpn_ext_R_18_shapes.yaml")
cfg.merge_from_list([
    "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "out",
])
trainer = DefaultTrainer(cfg)
trainer.train()
"""
    result = installed_plugin.run(code, cwd=str(tmp_path))
    assert result.returncode != 0
    assert "ValueError: PanopticFPNExt: a training input has no 'sem_seg' target" in result.stderr
    assert "PanopticDatasetMapper" in result.stderr and "build_evaluator" in result.stderr


def test_lazy_config_instantiates_the_yaml_route_model(installed_plugin):
    code = readme_python_block("### LazyConfig") + """
from detectron2.modeling import build_model

yaml_model = build_model(
    model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.yaml")
)
shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
assert type(model) is type(yaml_model)
assert shapes(model) == shapes(yaml_model)
assert vars(model.combiner) == vars(yaml_model.combiner)
for name in ("ignore_value", "common_stride", "loss_weight"):
    assert getattr(model.sem_seg_head, name) == getattr(yaml_model.sem_seg_head, name), name
assert type(model.sem_seg_head) is type(yaml_model.sem_seg_head)
assert model.roi_heads.box_predictor.loss_weight == yaml_model.roi_heads.box_predictor.loss_weight
frozen = lambda m: [n for n, p in m.named_parameters() if not p.requires_grad]  # noqa: E731
assert frozen(model) == frozen(yaml_model)
assert cfg.train.device == ("cuda" if __import__("torch").cuda.is_available() else "cpu")
print("OK", len(shapes(model)))
"""
    assert "OK" in _check(installed_plugin.run(code))


# A user's LazyConfig derived from the plugin's: tiny images, the shapes classes, no download.
MY_LAZY_CONFIG = """
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
import panoptic_fpn_ext
from panoptic_fpn_ext import model_zoo

for split in ("train", "val"):
    panoptic_fpn_ext.register_coco_panoptic_dataset(
        f"my_{split}", f"my_data/{split}", f"my_data/panoptic_{split}",
        f"my_data/annotations/panoptic_{split}.json",
    )
base = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_ext_R_50_1x.py")
model, dataloader, optimizer, lr_multiplier, train = (
    base.model, base.dataloader, base.optimizer, base.lr_multiplier, base.train
)
model.roi_heads.num_classes = 3
model.sem_seg_head.num_classes = 4
dataloader.train.dataset.names = "my_train"
dataloader.test.dataset.names = "my_val"
dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = dataloader.test.num_workers = 0
train.update(init_checkpoint="", max_iter=2, eval_period=2, device="cpu", output_dir="out")
"""


# Two iterations of R50 at a small size, then PQ through the EvalHook (~15 s on 2 cores)
def test_detectron2_lazyconfig_train_net_trains_and_evaluates_the_lazy_config(
    installed_plugin, tmp_path
):
    import detectron2

    script = os.path.join(
        os.path.dirname(os.path.dirname(detectron2.__file__)), "tools", "lazyconfig_train_net.py"
    )
    if not os.path.isfile(script):
        pytest.skip("this detectron2 install has no tools/lazyconfig_train_net.py")
    (tmp_path / "my_config.py").write_text(MY_LAZY_CONFIG)
    _check(installed_plugin.run(MAKE_MY_DATA, cwd=str(tmp_path)))
    result = installed_plugin.python(
        [script, "--config-file", "my_config.py"], cwd=str(tmp_path), timeout=600
    )
    log = _check(result) + result.stderr
    assert "copypaste: Task: panoptic_seg" in log, log[-3000:]
    assert re.search(r"copypaste: PQ,SQ,RQ", log), log[-3000:]
    assert os.path.exists(tmp_path / "out" / "model_final.pth")


DECODE_A_PNG = """
import io
import numpy as np
from PIL import Image
import panoptic_fpn_ext
from panoptic_fpn_ext.evaluation.png import decode_rgba, joint_counts, read_filtered_png

rgb = np.random.RandomState(0).randint(0, 3, (6, 5, 3)).astype(np.uint8)
buffer = io.BytesIO()
Image.fromarray(rgb).save(buffer, format="PNG")
png = read_filtered_png(buffer.getvalue(), "x.png")
assert (decode_rgba(png)[..., :3] == rgb).all()
ids = rgb[..., 0] + 256 * rgb[..., 1].astype(np.int64) + 65536 * rgb[..., 2].astype(np.int64)
gt_ids = np.unique(ids[ids != 0])
counts = joint_counts(png, gt_ids, np.zeros(30, dtype=np.int64), np.zeros(0, dtype=np.int64))
assert counts[1:-1, 0].tolist() == [int((ids == i).sum()) for i in gt_ids], counts
print("decoded", np.unique(ids).size)
"""


def _make_read_only(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def _make_writable(root: str) -> None:
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755)


@pytest.fixture
def read_only_install(installed_plugin):
    """A read-only copy of the installed plugin, and a command prefix under which the file modes
    hold: as root, ``setpriv`` drops the capabilities that bypass them (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    base = tempfile.mkdtemp(prefix="read_only_install_")
    site = os.path.join(base, "site")
    shutil.copytree(installed_plugin.target, site)
    for folder, dirs, _ in os.walk(site):  # no compiled code cached by earlier runs
        if "__pycache__" in dirs:
            dirs.remove("__pycache__")
            shutil.rmtree(os.path.join(folder, "__pycache__"))
    homes = {"read_only": os.path.join(base, "home_ro"), "writable": os.path.join(base, "home")}
    for home in homes.values():
        os.makedirs(home)
    _make_read_only(site)
    os.chmod(homes["read_only"], 0o555)
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    yield site, homes, prefix if os.geteuid() == 0 else []
    _make_writable(base)
    shutil.rmtree(base)


@pytest.mark.parametrize("home", ["read_only", "writable"])
def test_import_and_png_decoding_work_on_a_read_only_install(
    installed_plugin, read_only_install, home
):
    site, homes, prefix = read_only_install
    env = {k: v for k, v in installed_plugin.env().items() if not k.startswith(("NUMBA_", "XDG_"))}
    env.update(PYTHONPATH=site, HOME=homes[home])
    probe = installed_plugin.run(f"open({site!r} + '/probe', 'w')", env=env, prefix=prefix)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, "the install is writable"

    result = installed_plugin.run(DECODE_A_PNG, env=env, prefix=prefix, cwd=homes[home])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "decoded" in result.stdout
    cached = [n for _, _, files in os.walk(homes[home]) for n in files if n.endswith(".nbi")]
    assert bool(cached) == (home == "writable"), cached  # numba's index files: cached in ~/.cache
