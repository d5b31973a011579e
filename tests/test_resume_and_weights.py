"""The checks of what a run loads: checkpoints to resume from (engine/resume.py) and weights that
do not fit the model (engine/weights.py)."""

import logging
import os
import pickle

import pytest
import torch
from torch import nn

from panoptic_fpn_ext.engine import (
    ResumeError,
    WeightsMismatchError,
    check_inference_weights,
    checkpoint_problem,
    resume_checkpoint,
    watch_loaded_weights,
)


def _checkpoint(path, iteration=3, mtime=None):
    torch.save({"model": {"w": torch.arange(300.0)}, "iteration": iteration}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: b"", "is an empty file"),
        (lambda data: data[: len(data) // 2], "is a damaged zip archive"),
        (lambda data: data[:-30], "is a damaged zip archive"),  # the end of central directory cut
        (lambda data: b"\x00" * len(data), "is not a PyTorch checkpoint"),
        (lambda data: pickle.dumps({"model": {}})[:5], "cannot be loaded by torch.load"),
        (lambda data: b"model_final.pth\n", "is not a PyTorch checkpoint"),
    ],
)
def test_damaged_checkpoints_are_named_with_their_problem(tmp_path, damage, problem):
    path = _checkpoint(tmp_path / "model.pth")
    with open(path, "rb") as f:
        data = f.read()
    assert checkpoint_problem(path) is None
    with open(path, "wb") as f:
        f.write(damage(data))
    assert problem in checkpoint_problem(path)


def test_a_legacy_checkpoint_is_loaded_whole(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"model": {}}, path, _use_new_zipfile_serialization=False)
    assert checkpoint_problem(str(path)) is None


def test_bytes_cut_out_of_the_middle_are_found(tmp_path):
    """The central directory survives, but the members before it moved."""
    path = _checkpoint(tmp_path / "model.pth")
    with open(path, "rb") as f:
        data = f.read()
    start = data.index(b"PK\x03\x04") + 100  # inside the first member
    with open(path, "wb") as f:
        f.write(data[:start] + data[start + 200 :])
    assert checkpoint_problem(path).startswith(("is a damaged zip archive", "is cut short"))


def _run_folder(tmp_path, tag):
    run = tmp_path / "run"
    run.mkdir()
    intact = _checkpoint(run / "model_0000003.pth", mtime=1e9)
    _checkpoint(run / "model_0000001.pth", mtime=1e8)
    if tag is not None:
        (run / "last_checkpoint").write_bytes(tag)
    return str(run), intact


@pytest.mark.parametrize(
    "tag, problem",
    [
        (b"", "last_checkpoint is empty"),
        (b"\xff\xfe\x00", "last_checkpoint is not text (3 bytes that are not UTF-8)"),
        (b"/etc/hostname", "last_checkpoint names '/etc/hostname', which is not a file of "),
        (b"../model_0000003.pth", "last_checkpoint names '../model_0000003.pth', which is not a"),
        (b"model_0000009.pth", "model_0000009.pth, which does not exist"),
        (b"model_final.pth", "model_final.pth, which is a damaged zip archive"),
        (None, "last_checkpoint does not exist, but the folder holds checkpoints"),
    ],
)
def test_resume_names_the_damage_and_the_newest_intact_checkpoint(tmp_path, tag, problem):
    run, intact = _run_folder(tmp_path, tag)
    (tmp_path / "run" / "model_final.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ResumeError) as error:
        resume_checkpoint(run)
    message = str(error.value)
    assert message.startswith(f"--resume: {run}/") and problem in message, message
    assert f"resume from it with --resume-from {intact}" in message


def test_resume_takes_the_named_checkpoint_or_starts_afresh(tmp_path):
    run, intact = _run_folder(tmp_path, b"model_0000003.pth")
    assert resume_checkpoint(run) == intact
    os.remove(intact)
    os.remove(os.path.join(run, "model_0000001.pth"))
    os.remove(os.path.join(run, "last_checkpoint"))
    assert resume_checkpoint(run) is None  # a new run: nothing to resume from
    (tmp_path / "run" / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(ResumeError, match="No checkpoint in .* can be loaded"):
        resume_checkpoint(run)


class _Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 1), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, 2)


def test_a_load_is_summed_up_by_module_and_checked(caplog):
    model = _Net()
    watch_loaded_weights(model)
    source = _Net().state_dict()
    source["head.weight"] = torch.zeros(3, 4)  # another class count: dropped by Detectron2's
    del source["head.weight"]  # checkpointer before load_state_dict, so it reads as missing
    source["extra.weight"] = torch.zeros(1)
    with caplog.at_level(logging.INFO, logger="panoptic_fpn_ext"):
        model.load_state_dict(source, strict=False)
    report = model.loaded_weights
    assert (report.num_loaded, len(report.model_keys)) == (7, 8)  # without num_batches_tracked
    summary = "Loaded 7 of 8 model tensors; 1 not loaded (absent from the checkpoint or of another "
    summary += "shape), by module: head 1/2; 1 tensors of the checkpoint unused, by module: extra 1"
    assert report.summary() == summary
    assert summary in caplog.text

    not_loaded = "1 of its 8 tensors were not loaded .*, first: head.weight"
    with pytest.raises(WeightsMismatchError, match=not_loaded):
        check_inference_weights(model, "w.pth", allow_partial=False)
    check_inference_weights(model, "w.pth", allow_partial=True)  # a warning only
    check_inference_weights(model, "", allow_partial=False)  # no weights: nothing to check


def test_weights_that_fill_no_backbone_tensor_are_refused():
    model = _Net()
    watch_loaded_weights(model)
    with pytest.raises(WeightsMismatchError, match="fill no tensor of the model's backbone"):
        model.load_state_dict({"head.weight": torch.zeros(2, 4)}, strict=False)
    model.head.load_state_dict({"weight": torch.zeros(2, 4), "bias": torch.zeros(2)})  # allowed
