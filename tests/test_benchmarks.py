"""The inference and training benchmarks on tiny inputs: their same-output checks are real."""

import contextlib
import os
import sys

import pytest
import torch
from detectron2.modeling import build_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_autocast  # noqa: E402  (benchmarks/ is put on the path just above)
import bench_inference  # noqa: E402
import bench_train  # noqa: E402
import common  # noqa: E402
from float_reference import FACTOR  # noqa: E402


def test_alternating_medians_rotates_which_function_runs_first():
    calls = []
    fns = [lambda name=name: calls.append(name) for name in "abc"]
    assert len(common.alternating_medians(fns, repeats=3, warmup=1)) == 3
    rounds = ["".join(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert rounds == ["abc", "bca", "cab", "abc"]


@pytest.mark.parametrize("raise_inside", [False, True])
def test_tf32_disabled_turns_tf32_off_and_restores_the_settings(raise_inside):
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, True
        with pytest.raises(RuntimeError) if raise_inside else contextlib.nullcontext():
            with common.tf32_disabled():
                assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
                assert "TF32 convolutions off, TF32 matmuls off" in common.gpu_settings()
                if raise_inside:
                    raise RuntimeError("inside")
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def test_gpu_settings_names_torch_defaults():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, False
        assert common.gpu_settings().startswith(
            "TF32 convolutions on, TF32 matmuls off (torch defaults)"
        )
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def _panoptic(device):
    ids = torch.tensor([[0, 1, 1], [2, 2, 3]], dtype=torch.int32, device=device)
    segments = [
        {"id": 1, "category_id": 4, "isthing": True},
        {"id": 2, "category_id": 7, "isthing": False},
        {"id": 3, "category_id": 4, "isthing": True},
    ]
    return ids, segments


def test_category_map_is_on_the_panoptic_maps_device():
    result = bench_inference.category_map(_panoptic("cpu"))
    assert result.device.type == "cpu"
    assert result.tolist() == [[0, 1005, 1005], [8, 8, 1005]]


@pytest.mark.gpu
def test_category_map_of_a_cuda_panoptic_map():
    result = bench_inference.category_map(_panoptic("cuda"))
    assert result.is_cuda and result.tolist() == [[0, 1005, 1005], [8, 8, 1005]]


def _perturb(model):
    """Change the plugin's semantic predictor (randomly: a shift of every class alike would
    leave the softmax, and so the loss, unchanged)."""
    weight = model.sem_seg_head.predictor.weight
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def inference_case():
    inputs = [{"image": bench_inference.make_image(96, 128)}]
    return inputs, bench_inference.build_models(inputs)


@pytest.mark.numerics
def test_inference_benchmark_times_checked_models(inference_case):
    inputs, models = inference_case
    result = bench_inference.measure(*models, inputs, repeats=1, warmup=0)
    assert result["reference"] > 0 and result["plugin"] > 0 and result["other"] > 0
    assert (result["plugin_layout"], result["other_layout"]) == ("channels_last", "contiguous")
    assert 0 <= result["considered"] <= result["detections"] <= 100
    assert 0 < result["logit_difference"] and result["error_ratio"] <= FACTOR
    assert 0 < result["pixel_agreement"] <= 1


def test_inference_profile_times_every_stage_within_the_call(inference_case):
    inputs, models = inference_case
    result = bench_inference.profile(dict(zip("abc", models)), inputs, repeats=2)
    for name in "abc":
        stages = [result[name][stage] for stage in bench_inference.STAGES]
        assert all(value > 0 for value in stages)
        assert sum(stages) < result[name]["total"]
    assert set(result["semantic labels"]) == {"argmax(dim=0)", "max(dim=0).indices"}


@pytest.mark.parametrize("perturbed", [1, 2], ids=["default_auto", "contiguous"])
def test_inference_benchmark_refuses_different_outputs(perturbed):
    inputs = [{"image": bench_inference.make_image(96, 128)}]
    models = bench_inference.build_models(inputs)
    _perturb(models[perturbed])
    with pytest.raises(AssertionError, match="differ"):
        bench_inference.measure(*models, inputs, repeats=1, warmup=0)


@pytest.mark.parametrize("perturbed", [1, 2], ids=["default_auto", "contiguous"])
def test_training_benchmark_checks_the_losses(perturbed):
    batch = bench_train.make_batch(1, 96, 128, "cpu")
    result = bench_train.measure_time(bench_train.build_models(batch), batch, repeats=1)
    assert set(result["losses"]) >= {"loss_sem_seg", "loss_cls", "loss_mask"}
    assert all(result[route] > 0 for route in bench_train.ROUTES)
    assert 0 <= result["channels_last_difference"] <= bench_train.CHANNELS_LAST_LOSS_RTOL
    models = bench_train.build_models(batch)
    _perturb(models[perturbed])
    with pytest.raises(AssertionError, match="loss_sem_seg differs"):
        bench_train.measure_time(models, batch, repeats=1)


def test_autocast_benchmark_refuses_missing_weights(tmp_path):
    missing = str(tmp_path / "model_final.pth")
    with pytest.raises(SystemExit, match=f"--weights {missing}: no such file"):
        bench_autocast.check_weights(missing)


def test_autocast_benchmark_times_both_precisions_and_measures_their_difference():
    inputs = [{"image": bench_inference.make_image(96, 128)}]
    fp32, autocast = bench_autocast.speed_models(inputs, "cpu", "bfloat16")
    assert fp32.inference_dtype is None and autocast.inference_dtype == torch.bfloat16
    result = bench_autocast.measure_speed([fp32, autocast], inputs, repeats=1)
    assert result["fp32"] > 0 and result["autocast"] > 0
    assert result["logit_difference"] > 0  # the autocast model really ran in bfloat16
    assert 0 < result["pixel_agreement"] <= 1


@pytest.mark.slow
def test_autocast_benchmark_evaluates_pq_of_given_weights(tmp_path):
    cfg = bench_autocast.quick_start_config("cpu", "", "")
    weights = str(tmp_path / "model.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    result = bench_autocast.evaluate_pq("cpu", weights, "bfloat16")
    assert set(result) == set(bench_autocast.PQ_KEYS)
    assert all(0 <= value <= 100 for value in result.values())
