"""The inference and training benchmarks on tiny inputs: their same-output checks are real."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_inference  # noqa: E402  (benchmarks/ is put on the path just above)
import bench_train  # noqa: E402
import common  # noqa: E402


def test_alternating_medians_rotates_which_function_runs_first():
    calls = []
    fns = [lambda name=name: calls.append(name) for name in "abc"]
    assert len(common.alternating_medians(fns, repeats=3, warmup=1)) == 3
    rounds = ["".join(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert rounds == ["abc", "bca", "cab", "abc"]


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


def test_inference_benchmark_times_checked_models(inference_case):
    inputs, models = inference_case
    result = bench_inference.measure(*models, inputs, repeats=1, warmup=0)
    assert result["reference"] > 0 and result["plugin"] > 0 and result["exact"] > 0
    assert 0 <= result["considered"] <= result["detections"] <= 100
    assert 0 < result["logit_difference"] <= bench_inference.LOGIT_TOLERANCE
    assert bench_inference.MIN_PIXEL_AGREEMENT <= result["pixel_agreement"] <= 1


def test_inference_profile_times_every_stage_within_the_call(inference_case):
    inputs, models = inference_case
    result = bench_inference.profile(dict(zip("abc", models)), inputs, repeats=2)
    for name in "abc":
        stages = [result[name][stage] for stage in bench_inference.STAGES]
        assert all(value > 0 for value in stages)
        assert sum(stages) < result[name]["total"]
    assert set(result["semantic labels"]) == {"argmax(dim=0)", "max(dim=0).indices"}


@pytest.mark.parametrize("perturbed", [1, 2], ids=["channels_last", "default_layout"])
def test_inference_benchmark_refuses_different_outputs(perturbed):
    inputs = [{"image": bench_inference.make_image(96, 128)}]
    models = bench_inference.build_models(inputs)
    _perturb(models[perturbed])
    with pytest.raises(AssertionError, match="differ"):
        bench_inference.measure(*models, inputs, repeats=1, warmup=0)


@pytest.mark.parametrize("perturbed", [1, 2], ids=["channels_last", "default_layout"])
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
