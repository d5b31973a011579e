"""Weights: paths checked before a run writes anything, and what a load filled.

Detectron2's checkpointer resolves ``MODEL.WEIGHTS`` only when it loads it, after
``default_setup`` has written ``config.yaml`` and the log into ``OUTPUT_DIR``; a missing file or an
unreachable URL then surfaces as a bare ``FileNotFoundError``/``URLError`` that names neither the
key nor the path. :func:`resolve_weights` does the same resolution up front (Detectron2's
``PathManager``: local paths, ``detectron2://``, ``catalog://``, ``http(s)://``, downloaded into
its cache), so that the checkpointer later finds the file in the cache.

Weights that load but do not fit the model (another architecture, other class counts, another
library's ``state_dict``) only make Detectron2's checkpointer log one warning per tensor. Here a
``load_state_dict`` post-hook (:func:`record_loaded_weights`) sums up what was loaded and refuses
weights that fill nothing of the backbone; the inference tools also refuse weights that leave any
tensor unloaded unless given ``--allow-partial-weights`` (:func:`check_inference_weights`).
"""

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from torch import nn

from ..logger import log_with_detectron2

__all__ = [
    "ALLOW_PARTIAL_FLAG",
    "LoadedWeights",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "check_inference_weights",
    "build_inference_model",
    "record_loaded_weights",
    "resolve_weights",
    "watch_loaded_weights",
]

logger = logging.getLogger(__name__)

# The command-line flag of train_net.py --eval-only, the predict tool and the export tool that
# lets weights leave tensors of the model unloaded.
ALLOW_PARTIAL_FLAG = "--allow-partial-weights"
BACKBONE_PREFIX = "backbone."
MODULE_DEPTH = 2  # summaries count tensors per module two levels deep: roi_heads.box_predictor
FIRST_KEYS = 5  # keys named in an error
# BatchNorm fills its num_batches_tracked counter itself when a checkpoint lacks it, so it always
# "loads": such keys are not counted.
UNCOUNTED_SUFFIX = ".num_batches_tracked"


class WeightsNotFoundError(FileNotFoundError):
    """A weights path or URL that does not exist or cannot be fetched; names the key and path."""


def resolve_weights(path: str, source: str = "MODEL.WEIGHTS") -> str:
    """The local file of a checkpoint path or URL, downloading a URL into PathManager's cache.

    Args:
        path: a local path, or a URL that Detectron2's ``PathManager`` handles.
        source: what gave ``path`` (a config key, a file), for error messages.
    Returns:
        the path of an existing local file.
    Raises:
        WeightsNotFoundError: ``path`` is empty, a local file that does not exist, or a URL that
            cannot be fetched (offline, HTTP error); the message names ``source`` and ``path``.
    """
    if not path:
        raise WeightsNotFoundError(f"{source} is empty; expected a checkpoint path or URL")
    is_url = "://" in path
    try:
        local = PathManager.get_local_path(path)
    except (OSError, ValueError) as e:
        reason = "could not be downloaded" if is_url else "could not be read"
        raise WeightsNotFoundError(f"{source} = {path!r} {reason}: {e}") from e
    if not os.path.isfile(local):
        where = f" (resolved to {local})" if local != path else ""
        raise WeightsNotFoundError(f"{source} = {path!r}{where}: no such file")
    return local


class WeightsMismatchError(ValueError):
    """Weights that do not fit the model; names the tensors not loaded and what to do."""


@dataclass(frozen=True)
class LoadedWeights:
    """What one ``load_state_dict`` into a model filled (:func:`record_loaded_weights`).

    Attributes:
        model_keys: every key of the model's ``state_dict`` but BatchNorm's
            ``num_batches_tracked`` counters.
        not_loaded: the model's keys the checkpoint did not fill: absent from it, or of another
            shape (Detectron2's checkpointer drops those before ``load_state_dict``).
        unused: the checkpoint's keys that match no key of the model.
    """

    model_keys: Tuple[str, ...]
    not_loaded: Tuple[str, ...]
    unused: Tuple[str, ...]

    @property
    def num_loaded(self) -> int:
        return len(self.model_keys) - len(self.not_loaded)

    @property
    def complete(self) -> bool:
        """Every tensor of the model was loaded."""
        return not self.not_loaded

    @property
    def backbone_loaded(self) -> bool:
        """Some tensor under ``backbone.`` was loaded (True for a model without a backbone)."""
        backbone = [k for k in self.model_keys if k.startswith(BACKBONE_PREFIX)]
        missing = sum(k.startswith(BACKBONE_PREFIX) for k in self.not_loaded)
        return not backbone or missing < len(backbone)

    def summary(self) -> str:
        """One line: loaded N of M tensors, those not loaded and the unused ones by module."""
        text = f"Loaded {self.num_loaded} of {len(self.model_keys)} model tensors"
        if self.not_loaded:
            totals = Counter(_module_of(k) for k in self.model_keys)
            skipped = Counter(_module_of(k) for k in self.not_loaded)
            modules = ", ".join(f"{m} {n}/{totals[m]}" for m, n in sorted(skipped.items()))
            text += (
                f"; {len(self.not_loaded)} not loaded (absent from the checkpoint or of another "
                f"shape), by module: {modules}"
            )
        if self.unused:
            unused = Counter(_module_of(k) for k in self.unused)
            modules = ", ".join(f"{m} {n}" for m, n in sorted(unused.items()))
            text += f"; {len(self.unused)} tensors of the checkpoint unused, by module: {modules}"
        return text


def _module_of(key: str) -> str:
    """The module a state_dict key belongs to, two levels deep (``roi_heads.box_predictor``)."""
    return ".".join(key.split(".")[:-1][:MODULE_DEPTH]) or key


def record_loaded_weights(model: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: log what was loaded; refuse weights that fill no tensor of
    the backbone.

    Sets ``model.loaded_weights`` (a :class:`LoadedWeights`) and logs its summary (a warning
    when tensors were not loaded: Detectron2's fine-tuning flow, e.g. COCO weights into a model
    with other class counts, where the predictors are skipped). Registered by
    :func:`watch_loaded_weights`; ``PanopticFPNExt`` registers it on itself, so every route that
    loads its weights (the plugin's trainer, Detectron2's ``DefaultTrainer`` and
    ``DefaultPredictor``, ``lazyconfig_train_net.py``) reports and checks them.

    Raises:
        WeightsMismatchError: the model has a backbone and none of its tensors was loaded (e.g.
            a torchvision ``state_dict``, or a checkpoint of another architecture).
    """
    counted = lambda keys: tuple(k for k in keys if not k.endswith(UNCOUNTED_SUFFIX))  # noqa
    report = LoadedWeights(
        counted(model.state_dict().keys()),
        counted(incompatible_keys.missing_keys),
        tuple(incompatible_keys.unexpected_keys),
    )
    model.loaded_weights = report
    log_with_detectron2()
    logger.log(logging.INFO if report.complete else logging.WARNING, report.summary())
    if not report.backbone_loaded:
        raise WeightsMismatchError(
            f"The weights loaded fill no tensor of the model's backbone: {report.summary()}; "
            f"first backbone tensors not loaded: {_first(report.not_loaded, BACKBONE_PREFIX)}. "
            "They are not weights of this architecture (a checkpoint of another depth, or "
            "another library's state_dict?); train from scratch with MODEL.WEIGHTS \"\" or use "
            "weights of this backbone"
        )


def watch_loaded_weights(model: nn.Module) -> None:
    """Register :func:`record_loaded_weights` on ``model`` (once); ``model.loaded_weights`` is
    None until weights are loaded."""
    if not hasattr(model, "loaded_weights"):
        model.loaded_weights = None
        model.register_load_state_dict_post_hook(record_loaded_weights)


def check_inference_weights(
    model: nn.Module, path: str, *, allow_partial: bool, source: str = "MODEL.WEIGHTS"
) -> None:
    """Refuse inference with weights that left tensors of ``model`` unloaded.

    Args:
        model: a model watched by :func:`watch_loaded_weights` (``PanopticFPNExt`` is), after
            ``path`` was loaded into it.
        path: the weights loaded ("" for none: nothing is checked).
        allow_partial: log a warning instead of raising (the tools' ``--allow-partial-weights``).
        source: what named ``path``, for the message.
    Raises:
        WeightsMismatchError: some tensors of the model were not loaded; names how many, the
            first few, and the flag that allows it.
        ValueError: ``model`` is not watched, or no weights were loaded into it.
    """
    if not path:
        return
    report = getattr(model, "loaded_weights", None)
    if report is None:
        raise ValueError(
            f"{source} = {path!r}: no record of the weights loaded into {type(model).__name__} "
            "(load them after watch_loaded_weights(model))"
        )
    if report.complete:
        return
    message = (
        f"{source} = {path!r} does not fit the model: {len(report.not_loaded)} of its "
        f"{len(report.model_keys)} tensors were not loaded (absent from the checkpoint or of "
        f"another shape), first: {_first(report.not_loaded)}. {report.summary()}."
    )
    if allow_partial:
        logger.warning(f"{message} Running anyway ({ALLOW_PARTIAL_FLAG}).")
        return
    raise WeightsMismatchError(
        f"{message} Its results would be those of a partly random model; use the weights this "
        f"config was trained into, or pass {ALLOW_PARTIAL_FLAG} to run with the tensors not "
        "loaded left at their initial values"
    )


def build_inference_model(cfg: CfgNode, *, allow_partial: bool) -> nn.Module:
    """Detectron2's ``build_model(cfg)`` in eval mode, with ``MODEL.WEIGHTS`` loaded by its
    checkpointer and checked by :func:`check_inference_weights`: the model of every inference
    route (``train_net.py --eval-only``, the predict, export and tune tools).

    Raises:
        WeightsMismatchError: as :func:`check_inference_weights`.
    """
    model = build_model(cfg).eval()
    watch_loaded_weights(model)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    check_inference_weights(model, cfg.MODEL.WEIGHTS, allow_partial=allow_partial)
    return model


def _first(keys: Sequence[str], prefix: str = "") -> str:
    chosen = [k for k in keys if k.startswith(prefix)]
    more = f", ... ({len(chosen) - FIRST_KEYS} more)" if len(chosen) > FIRST_KEYS else ""
    return ", ".join(chosen[:FIRST_KEYS]) + more
