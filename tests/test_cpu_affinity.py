"""Under an affinity mask of one core (``taskset -c N``, a container's cpuset) the plugin and
the benchmarks count that core, not the machine's: the PQ evaluator's default threads, torch's
threads (which the combiner shares its work among), and the machine line of BENCHMARKS.md."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import os, sys
import torch
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
from common import machine_description
from panoptic_fpn_ext.evaluation.panoptic_evaluator import usable_cores
print(len(os.sched_getaffinity(0)), usable_cores(), torch.get_num_threads())
print(machine_description("cpu"))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_one_core_affinity_mask_gives_one_thread():
    core = min(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, ROOT],
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts, machine = result.stdout.splitlines()[-2:]
    assert counts == "1 1 1"  # the mask, the evaluator's default, torch's threads
    cores = os.cpu_count()
    assert f"{cores} cores (1 usable), 1 torch threads" in machine or cores == 1, machine
