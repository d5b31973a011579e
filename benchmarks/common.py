"""Shared helpers for the scripts in benchmarks/: timing, machine description, BENCHMARKS.md rows.

Every benchmark measures the reference and the plugin in the same run and reports their ratio;
absolute times are only meaningful on the machine that printed them.
"""

import contextlib
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import torch

from panoptic_fpn_ext.evaluation.panoptic_evaluator import usable_cores
from panoptic_fpn_ext.file_io import atomic_write

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
# In memory probes, glibc's malloc serves every allocation of at least this many bytes with its
# own memory map, returned to the system when freed: the peak resident set then follows the live
# buffers, and repeats from run to run, instead of the allocator's cached heap (~10% apart).
PROBE_MMAP_THRESHOLD = 64 * 1024


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs.

    CUDA work is synchronised before each clock read, so GPU times are complete.
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_medians(
    fns: List[Callable[[], object]], repeats: int, warmup: int = 1
) -> List[float]:
    """Median seconds of each of ``fns``, timed in alternation (one call of each per round, after
    ``warmup`` rounds), so that a change of load on a shared machine affects all of them alike.
    Each round starts with the next function, so that none always runs first."""
    times: List[List[float]] = [[] for _ in fns]
    for round_index in range(warmup + repeats):
        for k in range(len(fns)):
            index = (round_index + k) % len(fns)
            seconds = median_seconds(fns[index], repeats=1, warmup=0)
            if round_index >= warmup:
                times[index].append(seconds)
    return [statistics.median(t) for t in times]


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Within the block, CUDA convolutions and matmuls compute float32 in full float32, not
    TF32 (torch's default lets cuDNN convolutions use TF32, ~10 mantissa bits on Ampere and
    later GPUs: too coarse for checking that two layouts or implementations agree). The previous
    settings are restored on exit, also after an exception. No effect on CPU computations."""
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def gpu_settings() -> str:
    """The precision settings in effect for CUDA float32 work, e.g. "TF32 convolutions on, TF32
    matmuls off (torch defaults)"."""
    convolutions = torch.backends.cudnn.allow_tf32
    matmuls = torch.backends.cuda.matmul.allow_tf32
    defaults = " (torch defaults)" if (convolutions, matmuls) == (True, False) else ""
    return (
        f"TF32 convolutions {'on' if convolutions else 'off'}, TF32 matmuls "
        f"{'on' if matmuls else 'off'}{defaults}, cuDNN benchmark "
        f"{'on' if torch.backends.cudnn.benchmark else 'off'}"
    )


def machine_description(device: str = "cpu") -> str:
    """One line naming the device the numbers were measured on (on a GPU, with the precision
    settings of :func:`gpu_settings` in effect while timing)."""
    if device.startswith("cuda"):
        return (
            f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
            f"{gpu_settings()}"
        )
    # the machine's cores, and those this process may use where an affinity mask (taskset, a
    # container's cpuset) leaves fewer: the threads follow those
    cores, usable = os.cpu_count(), usable_cores()
    cores_text = f"{cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    return (
        f"CPU {platform.processor() or platform.machine()}, {cores_text}, "
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


def _send_result(connection, probe: Callable[..., Any], args: tuple) -> None:
    connection.send(probe(*args))


def in_fresh_process(probe: Callable[..., Any], *args) -> Any:
    """``probe(*args)`` in a fresh (spawned, non-daemonic) process whose glibc malloc uses
    ``PROBE_MMAP_THRESHOLD``; returns its result.

    Raises:
        RuntimeError: the process died before sending a result (its exit code is named).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_send_result, args=(sender, probe, args))
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(PROBE_MMAP_THRESHOLD)  # read by the child's libc
    try:
        process.start()
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
    sender.close()  # the child's copy is the only writer left: recv() fails if the child dies
    try:
        result = receiver.recv()
    except EOFError:
        result = None
    process.join()
    if result is None:
        raise RuntimeError(
            f"memory probe {probe.__name__}{args} exited with code {process.exitcode}"
        )
    return result


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
