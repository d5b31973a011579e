"""Config keys: defaults, idempotence, and start-up errors naming the file or key at fault."""

import glob
import os
import re

import pytest
import torch
from detectron2.config import get_cfg

from panoptic_fpn_ext import (
    add_panoptic_fpn_ext_config,
    merge_config_file,
    merge_config_list,
    validate_config,
)


def _cfg():
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    return cfg


def test_adds_plugin_keys_with_defaults():
    cfg = _cfg()
    assert cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME == "PanopticHeuristicCombiner"
    assert cfg.PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS == []
    # Keys shared with Detectron2 keep Detectron2's (= the paper's) defaults.
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 128
    assert cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE == 4
    assert cfg.MODEL.SEM_SEG_HEAD.NORM == "GN"
    assert cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT == 1.0


def test_readme_lists_every_key_the_plugin_adds_with_its_default():
    """README's "Config keys the plugin adds" table: one row per key, its default as written."""
    from panoptic_fpn_ext.config import _all_keys, _lookup

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("### Config keys the plugin adds") :]
    rows = re.findall(r"^\| `([A-Z_.]+)` \| `([^`]*)` \|", section, re.M)
    cfg = _cfg()
    added = sorted(set(_all_keys(cfg)) - set(_all_keys(get_cfg())))
    assert sorted(key for key, _ in rows) == added
    written = lambda v: f'"{v}"' if isinstance(v, str) else repr(v)  # noqa: E731
    for key, default in rows:
        assert default == written(_lookup(cfg, key)), key


def test_idempotent():
    cfg = _cfg()
    cfg.MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME = "Custom"
    before = cfg.dump()
    add_panoptic_fpn_ext_config(cfg)  # a second project calling it must not fail or reset values
    assert cfg.dump() == before


@pytest.mark.parametrize(
    "yaml_text, bad_key",
    [
        (
            "MODEL:\n  PANOPTIC_FPN_EXT:\n    COMBINER_NAM: X\n",
            "MODEL.PANOPTIC_FPN_EXT.COMBINER_NAM",
        ),
        (
            "PANOPTIC_FPN_EXT:\n  EVAL:\n    EXPORT_FORMAT: []\n",
            "PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMAT",
        ),
    ],
)
def test_misspelled_key_names_file_and_key(tmp_path, yaml_text, bad_key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError) as err:
        merge_config_file(_cfg(), str(path))
    assert str(path) in str(err.value) and bad_key in str(err.value)


def test_wrong_type_names_file(tmp_path):
    path = tmp_path / "bad_type.yaml"
    path.write_text("PANOPTIC_FPN_EXT:\n  EVAL:\n    INSTANCE_AP: [1, 2]\n")
    with pytest.raises(ValueError, match="bad_type.yaml"):
        merge_config_file(_cfg(), str(path))


def _validated(*opts):
    cfg = _cfg()
    cfg.merge_from_list(list(opts))
    validate_config(cfg)
    return cfg


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ("MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", 1.5),
            "OVERLAP_THRESH = 1.5 is out of range",
        ),
        (("MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", -0.1), "CONFIDENCE_THRESH"),
        (("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 300), "IGNORE_VALUE = 300"),
        (("SOLVER.IMS_PER_BATCH", 0), "IMS_PER_BATCH = 0"),
        (("PANOPTIC_FPN_EXT.SEMANTIC_TARGET", "things"), "SEMANTIC_TARGET = 'things'"),
        (("PANOPTIC_FPN_EXT.EVAL.EXPORT_FORMATS", ["kitti"]), "unknown format 'kitti'"),
        (("MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME", "Nope"), "COMBINER_NAME = 'Nope' is not in"),
        (
            ("MODEL.DEVICE", "cpu", "DATASETS.TRAIN", ("no_such_set",)),
            "names dataset 'no_such_set'",
        ),
        (("MODEL.DEVICE", "tpu9"), "MODEL.DEVICE = 'tpu9'"),
        (("MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", True), "SOLVER.AMP.ENABLED = True needs"),
    ],
)
def test_validate_config_names_the_key(opts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _validated(*opts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_rejected():
    with pytest.raises(ValueError, match="MODEL.DEVICE = 'cuda'.*no CUDA device"):
        _validated("MODEL.DEVICE", "cuda")


def test_defaults_validate():
    _validated("DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.DEVICE", "cpu")


def test_train_net_rejects_bad_values_before_building_anything(monkeypatch, tmp_path):
    """train_net.setup validates before any model, data loader or output directory exists."""
    import train_net
    from detectron2.engine import default_argument_parser

    def fail(*args, **kwargs):
        raise AssertionError("data was loaded before the config was validated")

    monkeypatch.setattr("detectron2.data.DatasetCatalog.get", fail)
    out = tmp_path / "out"
    argv = [
        "--config-file",
        "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml",
        "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH",
        "2.0",
        "OUTPUT_DIR",
        str(out),
    ]
    with pytest.raises(ValueError, match="OVERLAP_THRESH = 2.0 is out of range"):
        train_net.setup(default_argument_parser().parse_args(argv))
    assert not out.exists()


def test_train_net_rejects_wrong_type_on_command_line():
    import train_net
    from detectron2.engine import default_argument_parser

    argv = ["--config-file", "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"]
    argv += ["SOLVER.MAX_ITER", "many"]
    with pytest.raises(ValueError, match="MAX_ITER"):
        train_net.setup(default_argument_parser().parse_args(argv))


# --- class counts against the datasets' metadata -----------------------------------------------

QUICK_START = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"
SEMANTIC_FPN = "configs/Cityscapes-SemanticSegmentation/semantic_fpn_R_50.yaml"


def _from_file(path, *opts):
    cfg = _cfg()
    merge_config_file(cfg, path)
    merge_config_list(cfg, ["MODEL.DEVICE", "cpu", *opts])
    validate_config(cfg)
    return cfg


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"),
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2, but dataset 'panoptic_fpn_ext_shapes_train' "
            "needs 4 (3 stuff classes + 1 'things'",
        ),
        (
            ("MODEL.ROI_HEADS.NUM_CLASSES", "80"),
            "MODEL.ROI_HEADS.NUM_CLASSES = 80, but dataset 'panoptic_fpn_ext_shapes_train' "
            "needs 3 (its 3 thing classes)",
        ),
        (  # a test set of other classes is checked too
            ("DATASETS.TEST", "('panoptic_fpn_ext_coco_2017_val',)"),
            "needs 54 (53 stuff classes",
        ),
    ],
)
def test_class_counts_must_match_the_datasets(opts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _from_file(QUICK_START, *opts)


def test_all_classes_target_counts_stuff_and_things():
    _from_file(SEMANTIC_FPN)  # 11 stuff + 8 things = 19
    message = "NUM_CLASSES = 12, but dataset 'panoptic_fpn_ext_cityscapes_fine_panoptic_train' "
    message += "needs 19 (11 stuff + 8 thing classes for the semantic target 'all_classes')"
    with pytest.raises(ValueError, match=re.escape(message)):
        _from_file(SEMANTIC_FPN, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "12")


def test_every_shipped_config_matches_its_datasets():
    paths = sorted(glob.glob("configs/**/*.yaml", recursive=True))
    assert paths, "no configs/ under the working directory: run from the repository root"
    for path in paths:
        if not os.path.basename(path).startswith("Base-"):
            _from_file(path)


# --- command-line overrides, missing files -------------------------------------------------------


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["MODEL.SEM_SEG_HEAD.NUM_CLASES", "3"],
            "config key MODEL.SEM_SEG_HEAD.NUM_CLASES does not exist; did you mean "
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        ),
        (["NOPE.KEY", "1"], "config key NOPE.KEY does not exist"),
        (["SOLVER.MAX_ITER"], "KEY VALUE pairs; got an odd number"),
        (["SOLVER.MAX_ITER", "many"], "Command-line override SOLVER.MAX_ITER 'many'"),
    ],
)
def test_command_line_errors_are_value_errors_naming_the_key(opts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        merge_config_list(_cfg(), opts)


def test_train_net_command_line_typo_is_a_value_error(tmp_path):
    import train_net

    out = tmp_path / "out"
    argv = ["--config-file", QUICK_START, "SOLVER.MAX_ITR", "10", "OUTPUT_DIR", str(out)]
    with pytest.raises(ValueError, match="SOLVER.MAX_ITR does not exist"):
        train_net.setup(train_net.argument_parser().parse_args(argv))
    assert not out.exists()


def test_missing_base_names_both_files(tmp_path):
    (tmp_path / "middle.yaml").write_text('_BASE_: "sub/missing_base.yaml"\n')
    (tmp_path / "top.yaml").write_text('_BASE_: "middle.yaml"\nSEED: 1\n')
    with pytest.raises(FileNotFoundError) as err:
        merge_config_file(_cfg(), str(tmp_path / "top.yaml"))
    message = str(err.value)
    assert str(tmp_path / "middle.yaml") in message  # the file whose _BASE_ is missing
    assert str(tmp_path / "sub" / "missing_base.yaml") in message


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Config file .*nope.yaml does not exist"):
        merge_config_file(_cfg(), str(tmp_path / "nope.yaml"))
