"""Test-suite options: ``--run-slow`` enables slow tests; ``gpu`` tests need CUDA;
``--float-report`` prints the float64-referenced measurements of ``numerics`` tests. The
builtin datasets' root is a temporary folder of the run (``pytest_configure``)."""

import os
import shutil
import tempfile

import pytest
import torch

import float_reference
from installed import installed_plugin  # noqa: F401  (a session fixture for every test module)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")
    parser.addoption(
        "--float-report",
        action="store_true",
        help="print each float64-referenced check (tests/float_reference.py) at the end",
    )


def pytest_configure(config):
    """``$DETECTRON2_DATASETS`` for this run: a fresh temporary folder (under ``$TMPDIR``), set
    before the plugin registers its builtin datasets. Tests that build the quick-start loader
    generate the synthetic set there: never in the working directory (which may be read-only)
    nor in a user's own datasets folder; tests that need data make their own."""
    config.datasets_root = tempfile.mkdtemp(prefix="panoptic_fpn_ext_datasets_")
    os.environ["DETECTRON2_DATASETS"] = config.datasets_root


def pytest_unconfigure(config):
    if getattr(config, "datasets_root", None):
        shutil.rmtree(config.datasets_root, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow (make test-slow)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def pytest_runtest_setup(item):
    float_reference.set_current_test(item.nodeid)


def pytest_terminal_summary(terminalreporter, config):
    if config.getoption("--float-report") and float_reference.MEASUREMENTS:
        terminalreporter.section("float64-referenced checks (tests/float_reference.py)")
        for line in float_reference.report_lines():
            terminalreporter.write_line(line)
