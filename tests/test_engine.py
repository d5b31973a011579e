"""Atomic checkpoints, the resumable sampler and the results summary tool."""

import itertools
import json
import math
import os

import pytest
import torch
from torch import nn

from panoptic_fpn_ext.engine import (
    AtomicDetectionCheckpointer,
    ResumableTrainingSampler,
    atomic_write,
)
from panoptic_fpn_ext.engine.trainer import loss_terms_of
from panoptic_fpn_ext.tools import summary


def test_atomic_write_failure_leaves_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_keep_the_umask_permissions(tmp_path, umask):
    """Files, checkpoints and the last_checkpoint tag get 0o666 & ~umask, as open() gives."""
    previous = os.umask(umask)
    try:
        atomic_write(str(tmp_path / "results.json"), lambda f: f.write(b"{}"))
        AtomicDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path)).save("model_0000009")
    finally:
        os.umask(previous)
    for name in ("results.json", "model_0000009.pth", "last_checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_checkpointer_failed_save_keeps_last_good(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009")
    good = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        model.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000019")
    monkeypatch.undo()

    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (tmp_path / "model_0000019.pth").exists()
    fresh = nn.Linear(2, 2)
    AtomicDetectionCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, good[k])


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumed_sampler_continues_the_same_stream():
    full = _take(ResumableTrainingSampler(7, seed=3), 40)  # crosses several epochs
    resumed = ResumableTrainingSampler(7, seed=999)  # a new run draws another seed...
    resumed.load_state_dict(ResumableTrainingSampler(7, seed=3).state_dict())  # ...restored here
    resumed.skip(12)
    assert _take(resumed, 28) == full[12:]


def test_sampler_rejects_negative_skip():
    with pytest.raises(ValueError, match=">= 0"):
        ResumableTrainingSampler(3, seed=0).skip(-1)


def _write(path, pq):
    path.write_text(json.dumps({"panoptic_seg": {"PQ": pq, "SQ": 70.0, "RQ": 50.0}}))
    return str(path)


def test_summary_passes_when_pq_improves(tmp_path, capsys):
    rc = summary.main([_write(tmp_path / "a.json", 1.5), _write(tmp_path / "b.json", 40.0)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "PQ 1.5 (untrained) -> 40.0 (trained)" in out


def test_summary_fails_when_pq_does_not_improve(tmp_path, capsys):
    rc = summary.main([_write(tmp_path / "a.json", 10.0), _write(tmp_path / "b.json", 10.0)])
    assert rc == 1
    assert "did not improve" in capsys.readouterr().out


def test_summary_names_unreadable_file(tmp_path):
    with pytest.raises(SystemExit, match="missing.json"):
        summary.main([str(tmp_path / "missing.json"), _write(tmp_path / "b.json", 1.0)])


@pytest.mark.parametrize(
    "loss_dict",
    [
        "{'loss_cls': nan, 'loss_mask': inf, 'loss_box_reg': 1e+37, 'loss_rpn_cls': -inf}",
        "{'loss_cls': np.float64(nan), 'loss_mask': np.float64(inf), "
        "'loss_box_reg': np.float64(1e+37), 'loss_rpn_cls': np.float64(-inf)}",
    ],
)
def test_loss_terms_are_read_from_detectron2_divergence_message(loss_dict):
    message = f"Loss became infinite or NaN at iteration=6!\nloss_dict = {loss_dict}"
    terms = loss_terms_of(message)
    assert list(terms) == ["loss_cls", "loss_mask", "loss_box_reg", "loss_rpn_cls"]
    assert math.isnan(terms["loss_cls"]) and terms["loss_mask"] == math.inf
    assert terms["loss_box_reg"] == 1e37 and terms["loss_rpn_cls"] == -math.inf
