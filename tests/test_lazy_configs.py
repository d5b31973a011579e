"""Every YAML config has a LazyConfig twin (the same path with ``.py``) equal to it.

Compared, from the objects each route builds: the model (module tree, every hyperparameter held
by a module or its helpers, parameter shapes and which are frozen, small buffers such as anchors
and pixel statistics), the solver (each parameter's LR, weight decay and momentum; the LR
multiplier at every schedule boundary; iterations, batch, checkpoint period), the datasets and
data mapping (names, filtering, workers, mapper with its augmentations), the test settings (test
mapper, evaluators and their options, evaluation period) and the weights to start from.
"""

import glob
import inspect
import os
import re
from typing import Dict

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig, OmegaConf

from panoptic_fpn_ext import PanopticDatasetMapper, merge_config_file
from panoptic_fpn_ext.evaluation import evaluator_options
from panoptic_fpn_ext.model_zoo import get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)
PLAIN = (bool, int, float, str, type(None))


def describe(root) -> Dict[str, object]:
    """Every plain value reachable from ``root`` through public attributes, keyed by its path.

    Modules and helper objects (matchers, box transforms, poolers, the combiner) give their type
    and public attributes; parameters their shape, dtype and ``requires_grad`` (values are random
    at construction); other tensors also their values when small (anchors, pixel mean/std).
    """
    out: Dict[str, object] = {}
    seen = set()

    def visit(obj, path):
        if isinstance(obj, (DictConfig, ListConfig)):  # what instantiate hands some objects
            obj = OmegaConf.to_container(obj, resolve=True)
        if isinstance(obj, torch.Tensor):
            values = obj.tolist() if obj.numel() <= 64 and not obj.requires_grad else None
            out[path] = (tuple(obj.shape), str(obj.dtype), obj.requires_grad, values)
        elif isinstance(obj, PLAIN):
            out[path] = obj
        elif isinstance(obj, (tuple, list)):
            out[path] = f"sequence of {len(obj)}"
            for i, value in enumerate(obj):
                visit(value, f"{path}[{i}]")
        elif isinstance(obj, dict):
            out[path] = f"mapping of {sorted(map(str, obj))}"
            for key, value in obj.items():
                visit(value, f"{path}[{key}]")
        elif inspect.isroutine(obj) or inspect.isclass(obj):
            out[path] = getattr(obj, "__qualname__", repr(obj))
        elif hasattr(obj, "__dict__"):
            out[path] = type(obj).__qualname__
            if id(obj) in seen:
                return
            seen.add(id(obj))
            for key, value in sorted(vars(obj).items()):
                if key in ("_parameters", "_buffers", "_modules"):
                    for name, item in value.items():
                        visit(item, f"{path}.{name}")
                elif not key.startswith("_"):
                    visit(value, f"{path}.{key}")
        else:
            out[path] = repr(obj)  # dtypes, memory formats

    visit(root, type(root).__name__)
    return out


def assert_same(expected: Dict[str, object], actual: Dict[str, object], what: str):
    keys = sorted(set(expected) | set(actual))
    differences = [
        f"{k}: YAML {expected.get(k, '<absent>')!r}, LazyConfig {actual.get(k, '<absent>')!r}"
        for k in keys
        if expected.get(k, "<absent>") != actual.get(k, "<absent>")
    ]
    assert not differences, f"{what} differs at {len(differences)} paths:\n" + "\n".join(
        differences[:25]
    )


@pytest.fixture(params=YAMLS, ids=lambda p: os.path.relpath(p, "configs"))
def twins(request):
    """(YAML config, LazyConfig) of one config and its twin."""
    cfg = get_cfg()
    merge_config_file(cfg, os.path.join(ROOT, request.param))
    lazy = LazyConfig.load(os.path.join(ROOT, request.param[: -len(".yaml")] + ".py"))
    return cfg, lazy


def test_every_yaml_config_has_a_lazy_twin_and_no_other_lazy_config_exists():
    lazy = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
        if f"{os.sep}common{os.sep}" not in p
    )
    assert lazy == [p[: -len(".yaml")] + ".py" for p in YAMLS]


def test_model_solver_and_weights_are_the_yaml_twins(twins):
    cfg, lazy = twins
    assert lazy.train.device == cfg.MODEL.DEVICE
    assert lazy.train.init_checkpoint == cfg.MODEL.WEIGHTS
    cfg.MODEL.DEVICE = "cpu"  # build both here
    torch.manual_seed(0)
    yaml_model = build_model(cfg)
    lazy_model = instantiate(lazy.model)
    assert_same(describe(yaml_model), describe(lazy_model), "the model")

    yaml_optimizer = DefaultTrainer.build_optimizer(cfg, yaml_model)
    lazy.optimizer.params.model = lazy_model
    lazy_optimizer = instantiate(lazy.optimizer)
    assert _optimizer_settings(yaml_optimizer, yaml_model) == _optimizer_settings(
        lazy_optimizer, lazy_model
    )
    schedule = DefaultTrainer.build_lr_scheduler(cfg, yaml_optimizer)
    lazy_schedule = instantiate(lazy.lr_multiplier)
    max_iter = cfg.SOLVER.MAX_ITER
    assert lazy.train.max_iter == max_iter
    boundaries = [cfg.SOLVER.WARMUP_ITERS, *cfg.SOLVER.STEPS]
    iters = sorted({0, 1, max_iter - 1} | {b + d for b in boundaries for d in (-1, 0, 1)})
    assert [schedule._multiplier(i / max_iter) for i in iters] == pytest.approx(
        [lazy_schedule(i / max_iter) for i in iters], rel=1e-12
    )
    assert lazy.train.checkpointer.period == cfg.SOLVER.CHECKPOINT_PERIOD
    assert lazy.train.amp.enabled == cfg.SOLVER.AMP.ENABLED
    assert lazy.train.get("seed", -1) == cfg.SEED


def _optimizer_settings(optimizer, model):
    """Each parameter's (name, LR, weight decay, momentum, Nesterov), sorted by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(
        (names[id(p)], group["lr"], group["weight_decay"], group["momentum"], group["nesterov"])
        for group in optimizer.param_groups
        for p in group["params"]
    ) + [type(optimizer).__mro__[-2].__name__]


def test_datasets_mapping_and_test_settings_are_the_yaml_twins(twins):
    cfg, lazy = twins
    loaders = OmegaConf.to_container(lazy.dataloader, resolve=True)
    train, test = loaders["train"], loaders["test"]
    names = lambda n: (n,) if isinstance(n, str) else tuple(n)  # noqa: E731
    assert names(train["dataset"]["names"]) == cfg.DATASETS.TRAIN
    assert names(test["dataset"]["names"]) == cfg.DATASETS.TEST
    for dataset in (train["dataset"], test["dataset"]):
        assert dataset["filter_empty"] == cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        assert dataset["sem_seg_num_classes"] == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        assert dataset["semantic_target"] == cfg.PANOPTIC_FPN_EXT.SEMANTIC_TARGET
        assert dataset["roi_heads_num_classes"] == (
            cfg.MODEL.ROI_HEADS.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor"
            else None
        )
    assert train["total_batch_size"] == cfg.SOLVER.IMS_PER_BATCH
    assert train["num_workers"] == test["num_workers"] == cfg.DATALOADER.NUM_WORKERS
    assert train.get("aspect_ratio_grouping", True) == cfg.DATALOADER.ASPECT_RATIO_GROUPING
    assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler" and "sampler" not in train
    unchecked = cfg.clone()  # the datasets' files are not here: the mapper's arguments only
    unchecked.defrost()
    unchecked.PANOPTIC_FPN_EXT.DATA_CHECK = "off"
    for is_train, loader in ((True, lazy.dataloader.train), (False, lazy.dataloader.test)):
        assert_same(
            describe(PanopticDatasetMapper(unchecked, is_train=is_train)),
            describe(instantiate(loader.mapper)),
            f"the {'training' if is_train else 'test'} mapper",
        )

    evaluator = loaders["evaluator"]
    assert evaluator.pop("dataset_name") == cfg.DATASETS.TEST[0]
    assert evaluator.pop("output_dir") == f"{lazy.train.output_dir}/inference"
    evaluator.pop("_target_")
    assert evaluator == evaluator_options(cfg)
    assert lazy.train.eval_period == cfg.TEST.EVAL_PERIOD


@pytest.mark.parametrize(
    "key, value, needs",
    [
        ("roi_heads.num_classes", 1, "needs 3 (its 3 thing classes)"),
        ("sem_seg_head.num_classes", 5, "needs 4 (3 stuff classes + 1 'things'"),
    ],
)
def test_lazy_loaders_refuse_class_counts_that_do_not_fit_their_datasets(key, value, needs):
    path = os.path.join(ROOT, "configs", "quick_start", "panoptic_fpn_ext_R_18_shapes.py")
    lazy = LazyConfig.apply_overrides(LazyConfig.load(path), [f"model.{key}={value}"])
    for loader, split in ((lazy.dataloader.train, "train"), (lazy.dataloader.test, "val")):
        dataset = f"panoptic_fpn_ext_shapes_{split}"
        message = f"Config key model.{key} = {value}, but dataset '{dataset}' {needs}"
        with pytest.raises(ValueError, match=re.escape(message)):
            instantiate(loader.dataset)  # before any record is read or generated
