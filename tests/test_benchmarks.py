"""The inference and training benchmarks on tiny inputs: their same-output checks are real."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_inference  # noqa: E402  (benchmarks/ is put on the path just above)
import bench_train  # noqa: E402


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


def test_inference_benchmark_times_identical_models(inference_case):
    inputs, (reference, plugin) = inference_case
    result = bench_inference.measure(reference, plugin, inputs, repeats=1, warmup=0)
    assert result["reference"] > 0 and result["plugin"] > 0
    assert 0 <= result["considered"] <= result["detections"] <= 100


def test_inference_benchmark_refuses_different_outputs(inference_case):
    inputs, (reference, plugin) = inference_case
    _perturb(plugin)
    with pytest.raises(AssertionError, match="differ"):
        bench_inference.measure(reference, plugin, inputs, repeats=1, warmup=0)


def test_training_benchmark_checks_the_losses():
    batch = bench_train.make_batch(1, 96, 128, "cpu")
    reference, plugin = bench_train.build_models(batch)
    result = bench_train.measure_time(reference, plugin, batch, repeats=1)
    assert set(result["losses"]) >= {"loss_sem_seg", "loss_cls", "loss_mask"}
    reference, plugin = bench_train.build_models(batch)
    _perturb(plugin)
    with pytest.raises(AssertionError, match="loss_sem_seg differs"):
        bench_train.measure_time(reference, plugin, batch, repeats=1)
