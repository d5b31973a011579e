"""Shared helpers for the scripts in benchmarks/: timing, machine description, BENCHMARKS.md rows.

Every benchmark measures the reference and the plugin in the same run and reports their ratio;
absolute times are only meaningful on the machine that printed them.
"""

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch

from panoptic_fpn_ext.file_io import atomic_write

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs.

    CUDA work is synchronised before each clock read, so GPU times are complete.
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine_description(device: str = "cpu") -> str:
    """One line naming the device the numbers were measured on."""
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak_rss() -> int:
    """Reset this process's peak resident memory to the current one (Linux); returns it, KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")


def command_line() -> str:
    """The command that ran this benchmark, as a user would retype it from the repo root."""
    script = os.path.relpath(sys.argv[0], BENCHMARKS_MD.parent)
    return " ".join(["python", script] + sys.argv[1:])


def update_benchmarks_md(row_id: str, text: str) -> None:
    """Replace (or append) the block of BENCHMARKS.md tagged ``row_id`` with ``text``.

    A block is delimited by ``<!-- row_id -->`` and ``<!-- /row_id -->`` markers. The file is
    rewritten atomically (temporary file + rename), so an interrupted run leaves it unchanged.
    """
    start, end = f"<!-- {row_id} -->", f"<!-- /{row_id} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic_write(str(BENCHMARKS_MD), lambda f: f.write(new.encode()))
