"""The tune tool (``python -m panoptic_fpn_ext.tools.tune``) on a few images of the bundled shapes
dataset with random weights: the sweep equals full evaluation runs and ``train_net.py
--eval-only``, the network runs once per image, the cache resumes and refuses other inputs."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from tune_cases import (
    CONFIG,
    ROOT,
    TINY,
    assert_same_results,
    evaluate,
    make_dataset,
    make_weights,
)

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.evaluation.combiner_cache import (
    CachedImage,
    CacheMismatchError,
    read_shard_ids,
)
from panoptic_fpn_ext.engine.weights import WeightsMismatchError
from panoptic_fpn_ext.tools import tune
from panoptic_fpn_ext.tools.tune_report import parse_grid, parse_setting
from panoptic_fpn_ext.evaluation.threshold_sweep import Setting

DATASET = "test_tune_shapes"
# The random model's scores lie in ~0.75-1 and its stuff regions up to ~3000 of 4096 pixels:
# each of these thresholds changes decisions.
GRID = ["confidence=0.05,0.88", "overlap=0.1,0.9", "stuff_area=1,600"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    make_dataset(str(root / "data"), DATASET)
    return {"root": root, "weights": make_weights(str(root / "model.pth"))}


def _run(inputs, output, *flags, weights=None, opts=()):
    """The tool in this process; returns its sweep.json."""
    argv = ["--config-file", CONFIG, "--dataset", DATASET, "--output", str(output)]
    argv += ["--workers", "1", *flags, "--opts", *TINY, *opts]
    argv += ["MODEL.WEIGHTS", weights or inputs["weights"]]
    assert tune.main(argv) == 0
    with open(os.path.join(output, "sweep.json")) as f:
        return json.load(f)


def _entry(sweep, setting):
    config = Setting(*setting).config()
    (entry,) = [s for s in sweep["settings"] if s["setting"] == config]
    return entry


def _results(sweep, setting):
    return _entry(sweep, setting)["panoptic_seg"]


def _counting_network_outputs(monkeypatch, stop_at=None):
    """Record the image ids the network's outputs are cached for; raise KeyboardInterrupt at
    the ``stop_at``-th one (an interrupted run)."""
    calls = []
    original = CachedImage.from_output

    def counted(image_id, output):
        calls.append(image_id)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return original(image_id, output)

    monkeypatch.setattr(CachedImage, "from_output", staticmethod(counted))
    return calls


@pytest.fixture(scope="module")
def swept(inputs):
    """One sweep of GRID (and the config's setting), counting the images the network saw."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _counting_network_outputs(monkeypatch)
        sweep = _run(inputs, inputs["root"] / "out", "--grid", *GRID)
    return {"sweep": sweep, "network_calls": calls}


@pytest.mark.parametrize(
    "setting", [(0.05, 0.1, 1), (0.88, 0.9, 600), (0.05, 0.9, 600), (0.5, 0.5, 64)]
)
def test_every_setting_equals_a_full_evaluation_run(inputs, swept, setting):
    expected, statistics = evaluate(DATASET, inputs["weights"], setting)
    assert_same_results(_results(swept["sweep"], setting), expected)
    # the counts behind them too: with random weights the things' FP counts are what moves
    counts = _entry(swept["sweep"], setting)["counts"]
    for key in ("tp", "fp", "fn"):
        assert counts[key] == getattr(statistics, key).tolist(), key
    if setting == (0.5, 0.5, 64):  # the config's own setting is always swept
        assert swept["sweep"]["config_setting"] == Setting(*setting).config()


def test_the_settings_give_different_results(swept):
    """The grid exercises every threshold: its 9 settings give 9 different count sets (the
    random model's things are all false positives, so their PQ stays 0; stuff PQ moves)."""
    counts = [s["counts"] for s in swept["sweep"]["settings"]]
    pq = {round(s["panoptic_seg"]["PQ"], 9) for s in swept["sweep"]["settings"]}
    assert len({json.dumps(c) for c in counts}) == 9 and len(pq) >= 3, counts


def test_the_network_runs_once_per_image_and_a_rerun_reuses_the_cache(inputs, swept, tmp_path):
    assert sorted(swept["network_calls"]) == list(range(1, 7))
    assert swept["sweep"]["images_predicted"] == 6
    cache = ["--cache", str(inputs["root"] / "out" / "cache")]
    again = _run(inputs, tmp_path, *cache, "--grid", "confidence=0.1", "overlap=0.5")
    assert again["images_predicted"] == 0
    assert_same_results(_results(again, (0.5, 0.5, 64)), _results(swept["sweep"], (0.5, 0.5, 64)))


def test_an_interrupted_network_pass_resumes_from_its_complete_shards(
    inputs, tmp_path, monkeypatch
):
    grid = ["--grid", "confidence=0.3", "overlap=0.5", "stuff_area=64"]
    with monkeypatch.context() as patched:
        _counting_network_outputs(patched, stop_at=4)
        with pytest.raises(KeyboardInterrupt):
            _run(inputs, tmp_path, *grid)
    shards = [str(tmp_path / "cache" / n) for n in sorted(os.listdir(tmp_path / "cache"))]
    kept = [i for path in shards if path.endswith(".npz") for i in read_shard_ids(path)]
    assert kept == [1, 2, 3]  # the images before the interruption, in complete shards
    calls = _counting_network_outputs(monkeypatch)
    resumed = _run(inputs, tmp_path, *grid)
    assert calls == [4, 5, 6]
    assert resumed["images_predicted"] == 3
    expected, _ = evaluate(DATASET, inputs["weights"], (0.5, 0.5, 64))
    assert_same_results(_results(resumed, (0.5, 0.5, 64)), expected)


def test_a_cache_of_other_weights_or_config_is_refused_or_rebuilt(inputs, swept, tmp_path):
    other = make_weights(str(tmp_path / "other.pth"), seed=1)
    grid = ["--grid", "confidence=0.3", "overlap=0.5", "stuff_area=64"]
    output = inputs["root"] / "out"
    with pytest.raises(CacheMismatchError, match="weights_sha256.*--rebuild-cache"):
        _run(inputs, output, *grid, weights=other)
    with pytest.raises(CacheMismatchError, match="config_sha256"):
        _run(inputs, output, *grid, opts=["MODEL.RPN.POST_NMS_TOPK_TEST", "30"])
    rebuild = ["--cache", str(tmp_path / "cache"), "--rebuild-cache"]
    shutil.copytree(output / "cache", tmp_path / "cache")  # the module's cache stays as it is
    rebuilt = _run(inputs, tmp_path / "out", *grid, *rebuild, weights=other)
    assert rebuilt["images_predicted"] == 6
    expected, _ = evaluate(DATASET, other, (0.5, 0.5, 64))
    assert_same_results(_results(rebuilt, (0.5, 0.5, 64)), expected)


def test_two_worker_processes_give_the_same_results(inputs, swept, tmp_path):
    argv = ["--config-file", CONFIG, "--dataset", DATASET, "--output", str(tmp_path)]
    argv += ["--cache", str(inputs["root"] / "out" / "cache"), "--workers", "2", "--grid", *GRID]
    assert tune.main(argv + ["--opts", *TINY, "MODEL.WEIGHTS", inputs["weights"]]) == 0
    with open(tmp_path / "sweep.json") as f:
        parallel = json.load(f)
    assert parallel["images_predicted"] == 0
    for entry, reference in zip(parallel["settings"], swept["sweep"]["settings"]):
        assert entry["setting"] == reference["setting"]
        assert_same_results(entry["panoptic_seg"], reference["panoptic_seg"])


def test_outputs_table_yaml_and_plots(inputs, swept):
    output = inputs["root"] / "out"
    sweep = swept["sweep"]
    best = max(sweep["settings"], key=lambda s: s["panoptic_seg"]["PQ"])
    assert sweep["best_setting"] == best["setting"]
    table = (output / "sweep.txt").read_text()
    assert "config (" in table and f"{best['panoptic_seg']['PQ']:.2f}" in table
    # the YAML snippet merges over the config and gives the best setting
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, CONFIG)
    merge_config_file(cfg, str(output / "best_setting.yaml"))
    assert Setting.from_config(cfg).config() == best["setting"]
    for name in ("sweep_thresholds", "sweep_per_class", "errors", "confusion"):
        assert (output / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_analysis_sums_to_the_gap_and_starts_at_the_measured_pq(inputs, swept):
    with open(inputs["root"] / "out" / "errors.json") as f:
        errors = json.load(f)
    stages = errors["stage_results"]
    assert_same_results(stages[0], _results(swept["sweep"], (0.5, 0.5, 64)))
    for key in ("PQ", "PQ_th", "PQ_st"):
        parts = [errors["contributions"][step][key] for step in errors["steps"]]
        assert math.fsum(parts) == pytest.approx(stages[-1][key] - stages[0][key], abs=1e-9)
    confusion = np.array(errors["confusion"]["rows_ground_truth_columns_predicted"])
    tp = sum(c["tp"] for c in errors["per_class"].values())
    assert np.trace(confusion) == tp  # matched pairs of equal classes are the true positives


def test_grid_and_setting_errors_name_the_item():
    config = Setting(0.5, 0.5, 64)
    with pytest.raises(ValueError, match="--grid spam=1: unknown threshold"):
        parse_grid(["spam=1"], config)
    with pytest.raises(ValueError, match=r"--grid overlap=1.5: overlap values must be in \[0, 1\]"):
        parse_grid(["overlap=1.5"], config)
    with pytest.raises(ValueError, match="stuff_area values must be whole numbers of pixels >= 1"):
        parse_grid(["stuff_area=0,64"], config)
    with pytest.raises(ValueError, match="--grid confidence: expected KEY=VALUES"):
        parse_grid(["confidence"], config)
    with pytest.raises(ValueError, match="--analyze 0.5,0.5"):
        parse_setting("0.5,0.5")
    grid = parse_grid(["confidence=0.2:0.4:3", "OVERLAP_THRESH=0.5", "stuff_area=64"], config)
    assert [s.confidence for s in grid] == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert len(parse_grid([], config)) == 125  # the default 5 x 5 x 5 holds the config's


def test_weights_that_do_not_fit_are_refused_before_anything_is_written(inputs, tmp_path):
    """As ``train_net.py --eval-only``: a tensor of the model missing from the weights stops the
    tool (naming the key and ``--allow-partial-weights``) before the cache or any output."""
    state = torch.load(inputs["weights"], map_location="cpu", weights_only=False)
    model = state["model"] if "model" in state else state
    del model["roi_heads.box_predictor.cls_score.weight"]
    partial = str(tmp_path / "partial.pth")
    torch.save({"model": model}, partial)
    output = tmp_path / "out"
    with pytest.raises(WeightsMismatchError, match="cls_score.weight.*--allow-partial-weights"):
        _run(inputs, output, weights=partial)
    assert not output.exists()


def test_equals_train_net_eval_only_and_runs_from_its_outputs(inputs, tmp_path):
    """``train_net.py --eval-only`` on the same weights (in a fresh process, the dataset
    registered first), then the tool from the config.yaml that run wrote."""
    data = inputs["root"] / "data"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import train_net
        from tune_cases import make_dataset
        make_dataset({str(data)!r}, {DATASET!r})
        args = train_net.argument_parser().parse_args(sys.argv[1:])
        train_net.main(args)
        """
    )
    command = [sys.executable, "-c", script, "--config-file", CONFIG, "--eval-only"]
    command += [*TINY, "MODEL.WEIGHTS", inputs["weights"], "DATASETS.TEST", f"('{DATASET}',)"]
    command += ["OUTPUT_DIR", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "run" / "eval_model"
    with open(run_dir / "eval_results.json") as f:
        expected = json.load(f)["panoptic_seg"]
    with open(run_dir / "config.yaml") as f:
        assert yaml.safe_load(f)["MODEL"]["WEIGHTS"] == inputs["weights"]
    argv = ["--config-file", str(run_dir / "config.yaml"), "--output", str(tmp_path / "tune")]
    argv += ["--workers", "1", "--grid", "confidence=0.5", "overlap=0.5", "stuff_area=64"]
    assert tune.main(argv + ["--opts", "MODEL.WEIGHTS", inputs["weights"]]) == 0
    with open(tmp_path / "tune" / "sweep.json") as f:
        sweep = json.load(f)
    assert sweep["dataset"] == DATASET
    assert_same_results(_results(sweep, (0.5, 0.5, 64)), expected)


@pytest.mark.gpu
def test_cuda_sweep_equals_a_cuda_evaluation_run(inputs, tmp_path):
    opts = ["MODEL.DEVICE", "cuda"]
    sweep = _run(inputs, tmp_path, "--grid", *GRID, opts=opts)
    for setting in [(0.05, 0.1, 1), (0.88, 0.9, 600)]:
        expected, _ = evaluate(DATASET, inputs["weights"], setting, opts=opts)
        assert_same_results(_results(sweep, setting), expected)
    assert torch.cuda.is_available()


def test_installed_wheel_tunes_a_dataset_registered_by_the_users_module(
    installed_plugin, inputs, swept, tmp_path
):
    """``python -m panoptic_fpn_ext.tools.tune`` from the installed wheel, outside the
    repository, the config given by name, the dataset registered by ``--import``."""
    data = inputs["root"] / "data"
    (tmp_path / "my_datasets.py").write_text(
        "from panoptic_fpn_ext.data import register_coco_panoptic_dataset\n"
        f"register_coco_panoptic_dataset('my_val', {str(data / 'val')!r}, "
        f"{str(data / 'panoptic_val')!r}, {str(data / 'annotations' / 'panoptic_val.json')!r})\n"
    )
    args = ["--config-file", "quick_start/panoptic_fpn_ext_R_18_shapes.yaml", "--dataset"]
    args += ["my_val", "--import", "my_datasets", "--output", "out", "--grid", "overlap=0.5"]
    args += ["confidence=0.5", "stuff_area=64", "--opts", *TINY, "MODEL.WEIGHTS"]
    result = installed_plugin.run_module(
        "panoptic_fpn_ext.tools.tune", args=[*args, inputs["weights"]], cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Outputs in out" in result.stdout
    with open(tmp_path / "out" / "sweep.json") as f:
        sweep = json.load(f)
    assert sweep["dataset"] == "my_val"
    assert_same_results(_results(sweep, (0.5, 0.5, 64)), _results(swept["sweep"], (0.5, 0.5, 64)))
    assert (tmp_path / "out" / "errors.png").exists()
