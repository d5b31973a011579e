"""Importing the plugin registers every component, under names that do not collide, repeatably."""

import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from fvcore.common.registry import Registry

import panoptic_fpn_ext
from panoptic_fpn_ext.modeling import PANOPTIC_COMBINER_REGISTRY
from panoptic_fpn_ext.registration import register_once

EXPECTED_DATASETS = [
    f"panoptic_fpn_ext_{name}"
    for name in (
        "shapes_train",
        "shapes_val",
        "coco_2017_train",
        "coco_2017_val",
        "cityscapes_fine_panoptic_train",
        "cityscapes_fine_panoptic_val",
    )
]


def test_every_component_is_registered():
    assert "PanopticFPNExt" in META_ARCH_REGISTRY
    assert "PanopticFPNExtSemSegHead" in SEM_SEG_HEADS_REGISTRY
    assert "PanopticHeuristicCombiner" in PANOPTIC_COMBINER_REGISTRY
    registered = set(DatasetCatalog.list())
    assert set(EXPECTED_DATASETS) <= registered


def test_builtins_are_untouched():
    # Detectron2's own components keep their names and classes.
    assert META_ARCH_REGISTRY.get("PanopticFPN").__module__.startswith("detectron2.")
    assert SEM_SEG_HEADS_REGISTRY.get("SemSegFPNHead").__module__.startswith("detectron2.")


def test_reimport_in_same_process_is_harmless():
    """Every module of the package reloaded in one process (in a child process, so that the
    reloaded classes do not replace the ones the other tests hold)."""
    code = (
        "import importlib, sys, panoptic_fpn_ext;"
        "[importlib.reload(sys.modules[m]) for m in list(sys.modules)"
        " if m.startswith('panoptic_fpn_ext')];"
        "from detectron2.modeling import META_ARCH_REGISTRY;"
        "print('PanopticFPNExt' in META_ARCH_REGISTRY)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("True")


def test_two_imports_in_fresh_interpreter():
    code = (
        "import importlib, panoptic_fpn_ext, panoptic_fpn_ext.modeling;"
        "importlib.reload(panoptic_fpn_ext.modeling.meta_arch);"
        "from detectron2.modeling import META_ARCH_REGISTRY;"
        "print('PanopticFPNExt' in META_ARCH_REGISTRY)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("True")


def test_register_once_refuses_a_different_object_under_a_taken_name():
    registry = Registry("TEST")

    @register_once(registry, name="Thing")
    class A:
        pass

    class B:
        pass

    with pytest.raises(ValueError, match="already taken"):
        register_once(registry, name="Thing")(B)
    assert registry.get("Thing") is A


def test_version():
    assert panoptic_fpn_ext.__version__
