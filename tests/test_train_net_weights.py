"""train_net.py: weights resolved before anything is written; --eval-only never replaces a
training run's files and refuses random weights unless asked for them."""

import json
import os

import pytest
import torch
import yaml

import train_net
from file_snapshots import snapshot
from panoptic_fpn_ext.data import generate_shapes_dataset, register_coco_panoptic_dataset
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer, ResumeError, WeightsNotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_start", "panoptic_fpn_ext_R_18_shapes.yaml")
TINY = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "48"]
TRAINING_RESULTS = {"panoptic_seg": {"PQ": 20.0}}


def _args(out_dir, *flags, opts=()):
    argv = ["--config-file", CONFIG, *flags, *TINY, "OUTPUT_DIR", str(out_dir), *opts]
    return train_net.argument_parser().parse_args(argv)


@pytest.fixture
def training_run(tmp_path):
    """An OUTPUT_DIR as a finished training run leaves it: config.yaml, eval_results.json, a
    checkpoint and last_checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("MODEL:\n  WEIGHTS: ''\n# the training run's config\n")
    (out / "eval_results.json").write_text(json.dumps(TRAINING_RESULTS))
    (out / "last_checkpoint").write_text("model_final.pth")
    torch.save({"model": {}}, out / "model_final.pth")
    return out



def test_eval_only_without_weights_refuses_and_writes_nothing(training_run):
    before = snapshot(training_run)
    with pytest.raises(ValueError, match=r"--eval-only with config key MODEL.WEIGHTS empty"):
        train_net.main(_args(training_run, "--eval-only"))
    assert snapshot(training_run) == before


@pytest.mark.parametrize("eval_only", [True, False])
def test_missing_weights_file_names_key_and_path_before_writing(tmp_path, eval_only):
    out = tmp_path / "out"
    missing = str(tmp_path / "no_such_model.pth")
    flags = ["--eval-only"] if eval_only else []
    with pytest.raises(WeightsNotFoundError) as err:
        train_net.main(_args(out, *flags, opts=["MODEL.WEIGHTS", missing]))
    assert "MODEL.WEIGHTS" in str(err.value) and missing in str(err.value)
    assert not out.exists()


def test_unreachable_weights_url_names_key_and_url(training_run, tmp_path, monkeypatch):
    """Offline: every HTTPS request goes through a proxy that refuses connections."""
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))  # nothing cached from before
    url = "detectron2://ImageNetPretrained/MSRA/R-18-does-not-exist.pkl"
    before = snapshot(training_run)
    with pytest.raises(WeightsNotFoundError) as err:
        train_net.main(_args(training_run, "--eval-only", opts=["MODEL.WEIGHTS", url]))
    message = str(err.value)
    assert "MODEL.WEIGHTS" in message and url in message and "could not be downloaded" in message
    assert snapshot(training_run) == before


def test_eval_output_dir_is_per_weights_and_keeps_other_evaluations(tmp_path):
    out = str(tmp_path)
    folder = train_net.eval_output_dir(out, "a/model_final.pth")
    assert folder == os.path.join(out, "eval_model_final")
    assert train_net.eval_output_dir(out, "") == os.path.join(out, "eval_random_weights")
    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump({"MODEL": {"WEIGHTS": "a/model_final.pth"}}, f)
    assert train_net.eval_output_dir(out, "a/model_final.pth") == folder  # the same weights again
    with pytest.raises(ValueError, match=r"holds the evaluation of MODEL.WEIGHTS 'a/model_final"):
        train_net.eval_output_dir(out, "b/model_final.pth")


def test_resume_eval_only_picks_last_checkpoint(training_run):
    args = _args(training_run, "--eval-only", "--resume")
    cfg = train_net.build_config(args)
    assert train_net.weights_to_load(cfg, args) == str(training_run / "model_final.pth")


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    """A registered 2-image shapes set (the quick-start classes), for a real evaluation."""
    shapes = str(tmp_path_factory.mktemp("shapes"))
    paths = generate_shapes_dataset(shapes, "val", 2, (40, 48), seed=3)
    name = "test_train_net_weights_tiny_val"
    register_coco_panoptic_dataset(
        name, paths["image_root"], paths["panoptic_root"], paths["panoptic_json"]
    )
    return name


def test_eval_only_with_random_weights_writes_beside_the_training_run(training_run, tiny_val):
    before = snapshot(training_run)
    opts = ["DATASETS.TEST", f"('{tiny_val}',)", "DATALOADER.NUM_WORKERS", "0"]
    args = _args(training_run, "--eval-only", "--allow-random-weights", opts=opts)
    results = train_net.main(args)
    after = snapshot(training_run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing replaced
    new = sorted(k for k in after if k not in before)
    assert new and all(k.startswith("eval_random_weights" + os.sep) for k in new), new
    folder = training_run / "eval_random_weights"
    assert json.loads((folder / "eval_results.json").read_text()) == json.loads(json.dumps(results))
    assert "PQ" in results["panoptic_seg"]
    assert yaml.safe_load((folder / "config.yaml").read_text())["MODEL"]["WEIGHTS"] == ""


def test_resume_from_the_checkpoint_a_damaged_run_names(tmp_path, tiny_val):
    """--resume refuses a cut-short final checkpoint and names the intact one; --resume-from it
    continues that run's iterations (~3 s)."""
    out = tmp_path / "run"
    opts = [
        "DATASETS.TRAIN", f"('{tiny_val}',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "1",
        "SOLVER.MAX_ITER", "5", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
        "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(32,)",
        "INPUT.MAX_SIZE_TRAIN", "48",
    ]  # fmt: skip
    trainer = PanopticFPNExtTrainer(train_net.checked_config(_args(out, opts=opts)))
    trainer.resume_or_load(resume=False)
    trainer.iter = 3  # as a run leaves it after its 4th iteration
    trainer.checkpointer.save("model_0000003")
    (out / "model_final.pth").write_bytes((out / "model_0000003.pth").read_bytes()[:5000])
    (out / "last_checkpoint").write_text("model_final.pth")
    before = snapshot(out)
    with pytest.raises(ResumeError, match=f"--resume-from {out}/model_0000003.pth"):
        train_net.main(_args(out, "--resume", opts=opts))
    assert snapshot(out) == before

    train_net.main(_args(out, "--resume-from", str(out / "model_0000003.pth"), opts=opts))
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 4  # iteration 4 ran, the last of SOLVER.MAX_ITER 5
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
