"""train_net.py's training path, instrumented for tests/test_training_runs.py.

    python tests/training_driver.py --record OUT.jsonl [--dump-weights DIR] [--nan-at ITER]
        <train_net.py arguments>

It runs what ``train_net.main`` runs for training (``setup``, ``PanopticFPNExtTrainer``,
``resume_or_load``, ``train``) through Detectron2's ``launch``, and adds:

* ``--record``: after every step, one JSON line ``{"rank", "iter", "lr", "image_ids"}`` (the LR
  the step used and the images of its batch) appended with a single ``write`` and fsync'd, so a
  run killed at any moment leaves complete lines (the last one possibly cut);
* ``--dump-weights``: each process saves its model's ``state_dict`` before and after training
  as ``DIR/rank{R}.pth``;
* ``--nan-at``: at that iteration the semantic loss is NaN and the mask loss inf (a diverging
  run);
* ``--huge-at``: at that iteration the box-regression loss reads 1e30 (its gradient unchanged).
"""

import json
import os
import sys

import torch
from detectron2.engine import HookBase, default_argument_parser, launch
from detectron2.utils import comm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_net  # noqa: E402  (the repository root is put on the path just above)
from panoptic_fpn_ext.engine import PanopticFPNExtTrainer  # noqa: E402


class _BatchIds:
    """Wraps a training data loader; remembers the ``image_id``s of the last batch it gave out."""

    def __init__(self, loader):
        self.loader = loader
        self.resumable_sampler = loader.resumable_sampler
        self.last_ids = []

    def __iter__(self):
        for batch in self.loader:
            self.last_ids = [d["image_id"] for d in batch]
            yield batch


class _RecordHook(HookBase):
    """Appends one JSON line per finished step to ``path``."""

    def __init__(self, path: str, loader: _BatchIds):
        self.path, self.loader = path, loader

    def before_step(self):
        self.lr = self.trainer.optimizer.param_groups[0]["lr"]

    def after_step(self):
        line = {"rank": comm.get_rank(), "iter": self.trainer.iter, "lr": self.lr}
        line["image_ids"] = self.loader.last_ids
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class _NaNAt(HookBase):
    """Makes ``loss_sem_seg`` NaN and ``loss_mask`` inf at ``iteration``, and ``loss_box_reg``
    read 1e30 (same gradient) at ``huge_at``."""

    def __init__(self, iteration, huge_at):
        self.iteration, self.huge_at = iteration, huge_at

    def before_train(self):
        model = self.trainer.model
        module = model.module if hasattr(model, "module") else model
        forward = module.forward

        def forward_with_nan(*args, **kwargs):
            losses = forward(*args, **kwargs)
            if self.trainer.iter == self.iteration:
                losses["loss_sem_seg"] = losses["loss_sem_seg"] * float("nan")
                losses["loss_mask"] = losses["loss_mask"] * float("inf")
            if self.trainer.iter == self.huge_at:
                box = losses["loss_box_reg"]
                losses["loss_box_reg"] = box + (1e30 - box.detach())
            return losses

        module.forward = forward_with_nan


class _InstrumentedTrainer(PanopticFPNExtTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return _BatchIds(super().build_train_loader(cfg))


def _main(args):
    cfg = train_net.setup(args)
    trainer = _InstrumentedTrainer(cfg)
    hooks = [_RecordHook(args.record, trainer.data_loader)]
    if args.nan_at is not None or args.huge_at is not None:
        hooks.append(_NaNAt(args.nan_at, args.huge_at))
    trainer.register_hooks(hooks)
    trainer.resume_or_load(resume=args.resume)
    model = trainer.model.module if comm.get_world_size() > 1 else trainer.model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    if args.dump_weights:
        path = os.path.join(args.dump_weights, f"rank{comm.get_rank()}.pth")
        state = {"world_size": comm.get_world_size(), "initial": initial}
        torch.save(dict(state, model=model.state_dict()), path)


def _parser():
    parser = default_argument_parser()
    parser.add_argument("--record", required=True, help="JSON-lines file of per-step records")
    parser.add_argument("--dump-weights", default="", help="folder for each process's weights")
    parser.add_argument("--nan-at", type=int, default=None, help="iteration whose loss is NaN")
    parser.add_argument("--huge-at", type=int, default=None, help="iteration of a 1e30 loss")
    return parser


if __name__ == "__main__":
    args = _parser().parse_args()
    launch(
        _main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
