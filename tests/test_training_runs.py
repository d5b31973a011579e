"""Real training runs of the quick-start config (subprocesses of tests/training_driver.py):
SIGKILL and --resume, divergence, and two CPU processes over Gloo through Detectron2's launch."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "training_driver.py")
CONFIG = os.path.join(ROOT, "configs", "quick_start", "panoptic_fpn_ext_R_18_shapes.yaml")
MAX_ITER = 24
# A short schedule that still has a warm-up, a step decay and several checkpoints.
SCHEDULE = [
    "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.WARMUP_ITERS", "8", "SOLVER.STEPS", "(14,)",
    "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()",
    "DATALOADER.NUM_WORKERS", "2", "MODEL.DEVICE", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """``DETECTRON2_DATASETS`` for the runs: the quick-start set is generated there once."""
    return str(tmp_path_factory.mktemp("datasets"))


def _start(datasets_root, record, out_dir, *flags, opts=()):
    """Start the driver; its log goes to ``out_dir``/../``record``.log."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root)
    cmd = [sys.executable, DRIVER, "--config-file", CONFIG, "--record", str(record), *flags]
    cmd += SCHEDULE + ["OUTPUT_DIR", str(out_dir), *opts]
    with open(f"{record}.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _run(datasets_root, record, out_dir, *flags, opts=(), timeout=300):
    """Run the driver to completion; returns (exit code, its log)."""
    proc = _start(datasets_root, record, out_dir, *flags, opts=opts)
    rc = proc.wait(timeout=timeout)
    with open(f"{record}.log") as f:
        return rc, f.read()


def _records(path):
    """The complete lines of a record file (a run killed mid-write may leave the last one cut)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    return [json.loads(line) for line in lines[:-1]]  # the text after the last "\n" is not whole


def _last_checkpoint(out_dir):
    with open(os.path.join(out_dir, "last_checkpoint")) as f:
        return os.path.join(out_dir, f.read())


@pytest.fixture(scope="module")
def reference_run(datasets_root, tmp_path_factory):
    """An uninterrupted run: per-iteration LR and batches, by iteration."""
    tmp = tmp_path_factory.mktemp("reference")
    rc, log = _run(datasets_root, tmp / "ref.jsonl", tmp / "out")
    assert rc == 0, log[-3000:]
    records = {r["iter"]: r for r in _records(tmp / "ref.jsonl")}
    assert sorted(records) == list(range(MAX_ITER))
    return records


def _kill_at_a_random_moment(proc, record, rng):
    """SIGKILL ``proc`` at a random moment after its first checkpoint (written at step 3): once
    a random step in [4, MAX_ITER - 7) has finished, after a random part of the time a step
    takes on this machine. The kill can land anywhere in a step (a checkpoint save included) and
    always leaves steps to resume, however fast the machine. Returns the moment, as text."""
    step = rng.randrange(4, MAX_ITER - 7)
    deadline = time.time() + 240
    seen = [(time.monotonic(), 0)]  # (time, records written) at each change seen
    while seen[-1][1] <= step:
        assert proc.poll() is None, "the run ended before the step chosen to kill it after"
        assert time.time() < deadline, f"step {step} not reached within 240 s"
        count = len(_records(record))
        if count != seen[-1][1]:
            seen.append((time.monotonic(), count))
        time.sleep(0.01)
    (t0, n0), (t1, n1) = seen[1], seen[-1]  # from the first step seen to finish
    step_seconds = (t1 - t0) / (n1 - n0) if n1 > n0 else 0.1
    delay = rng.uniform(0.0, step_seconds)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"{delay:.2f} s after step {step}"


def test_sigkill_then_resume_continues_iterations_lr_and_data_order(
    datasets_root, reference_run, tmp_path
):
    seed = random.randrange(2**32)
    out = tmp_path / "out"
    proc = _start(datasets_root, tmp_path / "killed.jsonl", out)
    moment = _kill_at_a_random_moment(proc, tmp_path / "killed.jsonl", random.Random(seed))
    context = f"(killed {moment}, seed {seed})"
    assert proc.returncode == -signal.SIGKILL, context

    checkpoint = torch.load(_last_checkpoint(out), map_location="cpu", weights_only=False)
    resume_at = checkpoint["iteration"] + 1
    assert resume_at % 4 == 0 and resume_at < MAX_ITER, context
    for r in _records(tmp_path / "killed.jsonl"):  # the killed run followed the reference
        ref = reference_run[r["iter"]]
        assert (r["lr"], r["image_ids"]) == (ref["lr"], ref["image_ids"]), (r["iter"], context)

    rc, log = _run(datasets_root, tmp_path / "resumed.jsonl", out, "--resume")
    assert rc == 0, log[-3000:]
    resumed = _records(tmp_path / "resumed.jsonl")
    assert [r["iter"] for r in resumed] == list(range(resume_at, MAX_ITER)), context
    for r in resumed:
        ref = reference_run[r["iter"]]
        assert r["lr"] == pytest.approx(ref["lr"], rel=1e-12), (r["iter"], context)
        assert r["image_ids"] == ref["image_ids"], (r["iter"], context)
    assert os.path.basename(_last_checkpoint(out)) == "model_final.pth"


def test_nan_loss_stops_with_the_iteration_and_term_and_keeps_the_checkpoint(
    datasets_root, tmp_path
):
    out = tmp_path / "out"
    rc, log = _run(datasets_root, tmp_path / "nan.jsonl", out, "--nan-at", "6", "--huge-at", "2")
    assert rc != 0
    assert "Training diverged at iteration 6: non-finite loss term(s) " in log
    message = log[log.index("Training diverged at iteration 6") :]
    assert "loss_sem_seg (nan)" in message and "loss_mask (inf)" in message, message
    assert re.search(r"the other terms: .*loss_cls [0-9.e+-]+", message), message
    assert (
        f"Last checkpoint of this run: {out / 'model_0000003.pth'} (iteration 3), weights all "
        "finite" in message
    ), message
    assert "Loss terms above 1e+06 first at iteration 2 (loss_box_reg 1e+30)" in message, message
    assert "the last one written before it: none in this run" in message, message
    assert [r["iter"] for r in _records(tmp_path / "nan.jsonl")] == list(range(6))
    checkpoint = torch.load(_last_checkpoint(out), map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 3
    floats = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in floats)
    assert not (out / "model_final.pth").exists()


def test_two_gloo_processes_through_launch_end_with_identical_weights(datasets_root, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    rc, log = _run(
        datasets_root,
        tmp_path / "ddp.jsonl",
        tmp_path / "out",
        "--num-gpus", "2", "--dump-weights", str(weights),
        opts=["SOLVER.MAX_ITER", "6"],
    )  # fmt: skip
    assert rc == 0, log[-3000:]
    rank0 = torch.load(weights / "rank0.pth", weights_only=False)
    rank1 = torch.load(weights / "rank1.pth", weights_only=False)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["model"].keys() == rank1["model"].keys()
    for key, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][key]), key

    records = _records(tmp_path / "ddp.jsonl")
    for it in range(6):  # each process trained on its own share of every batch
        ids = [r["image_ids"] for r in records if r["iter"] == it]
        assert len(ids) == 2 and not set(ids[0]) & set(ids[1]), it
    moved = [k for k, v in rank0["initial"].items() if not torch.equal(v, rank0["model"][k])]
    assert len(moved) > len(rank0["model"]) // 2  # training changed the weights
