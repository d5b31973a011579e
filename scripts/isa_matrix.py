"""Runs the ``numerics`` tests (pytest -m numerics) under each CPU kernel setting this machine
supports: oneDNN's instruction set (``ONEDNN_MAX_CPU_ISA``), ATen's (``ATEN_CPU_CAPABILITY``) and
one OpenMP thread (another reduction order). ``make test-isa`` runs it.

A setting the CPU lacks is skipped with the missing flags named (ATen would stop with an illegal
instruction; oneDNN would silently keep its own). Each other setting is first probed in a fresh
process: the ATen capability, the oneDNN ISA (from oneDNN's verbose log) and the thread count it
really gives. A setting whose kernels equal an earlier run's is skipped, naming that run, and one
that does not take effect is a failure.

Usage: python scripts/isa_matrix.py [--only NAME ...] [--list] [-- extra pytest arguments]
Exit status: 0 when every run setting passed, 1 otherwise.
"""

import argparse
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOBS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")
AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")

# name: (environment, /proc/cpuinfo flags the CPU needs for it, what the probe must report)
SETTINGS: Dict[str, Tuple[Dict[str, str], Tuple[str, ...], Dict[str, str]]] = {
    "default": ({}, (), {}),
    "onednn-sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, ("sse4_1",), {"onednn": "SSE4.1"}),
    "onednn-avx": ({"ONEDNN_MAX_CPU_ISA": "AVX"}, ("avx",), {"onednn": "AVX"}),
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, ("avx2",), {"onednn": "AVX2"}),
    "onednn-avx512": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, AVX512, {"onednn": "AVX-512"}),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, (), {"aten": "DEFAULT"}),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, ("avx2", "fma"), {"aten": "AVX2"}),
    "aten-avx512": ({"ATEN_CPU_CAPABILITY": "avx512"}, AVX512, {"aten": "AVX512"}),
    "one-thread": ({"OMP_NUM_THREADS": "1"}, (), {"threads": "1"}),
}

PROBE = """
import io, os, sys, torch
x = torch.randn(2, 32, 16, 16).contiguous(memory_format=torch.channels_last)
w = torch.randn(32, 32, 3, 3).contiguous(memory_format=torch.channels_last)
read, write = os.pipe()
saved = os.dup(1)
os.dup2(write, 1)  # oneDNN's verbose log goes to the C stdout
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.conv2d(x, w)
sys.stdout.flush()
os.dup2(saved, 1)
os.close(write)
log = os.read(read, 1 << 20).decode(errors="replace")
isa = [line.split("isa:", 1)[1].strip() for line in log.splitlines() if "isa:" in line]
print(f"aten={torch.backends.cpu.get_cpu_capability()}")
print(f"onednn={isa[0] if isa else 'not reported'}")
print(f"threads={torch.get_num_threads()}")
"""


def cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def base_environment() -> Dict[str, str]:
    """This process's environment without the matrix's knobs: the machine's own choices."""
    return {k: v for k, v in os.environ.items() if k not in KNOBS}


def probe(env: Dict[str, str]) -> Dict[str, str]:
    """{"aten", "onednn", "threads"}: what a fresh process with ``env`` really runs."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"probe failed ({result.returncode}): {result.stderr[-2000:]}")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def run_setting(env: Dict[str, str], pytest_args: List[str]) -> Tuple[int, float]:
    """pytest -m numerics under ``env``; (exit status, seconds)."""
    command = [sys.executable, "-m", "pytest", "-m", "numerics", "-q", "-p", "no:cacheprovider"]
    start = time.monotonic()
    rc = subprocess.call(command + pytest_args, env=env, cwd=ROOT)
    return rc, time.monotonic() - start


def missing_flags(needed: Tuple[str, ...], flags: Optional[set]) -> Optional[str]:
    """Why the CPU cannot run a setting needing ``needed`` flags, or None."""
    if not needed:
        return None
    if flags is None:
        return "no /proc/cpuinfo to read the CPU's instruction sets from"
    missing = [flag for flag in needed if flag not in flags]
    return f"the CPU lacks {', '.join(missing)}" if missing else None


def matrix(names: List[str], pytest_args: List[str]) -> int:
    flags = cpu_flags()
    seen: Dict[Tuple[str, ...], str] = {}
    rows, failed = [], False
    for name in names:
        extra, needed, expected = SETTINGS[name]
        reason = missing_flags(needed, flags)
        if reason:
            rows.append((name, "skipped", reason))
            continue
        env = dict(base_environment(), **extra)
        kernels = probe(env)
        wrong = {k: kernels.get(k) for k, v in expected.items() if v not in kernels.get(k, "")}
        if wrong:
            rows.append((name, "FAILED", f"did not take effect: {wrong}, expected {expected}"))
            failed = True
            continue
        summary = f"ATen {kernels['aten']}, oneDNN {kernels['onednn']}, "
        summary += f"{kernels['threads']} threads"
        key = (kernels["aten"], kernels["onednn"], kernels["threads"])
        if key in seen:
            rows.append((name, "skipped", f"the same kernels as {seen[key]} ({summary})"))
            continue
        seen[key] = name
        variables = " ".join(f"{k}={v}" for k, v in extra.items()) or "(no variable)"
        print(f"\n=== {name}: {variables}: {summary}", flush=True)
        rc, seconds = run_setting(env, pytest_args)
        failed |= rc != 0
        status = "passed" if rc == 0 else f"FAILED (pytest {rc})"
        rows.append((name, status, f"{summary}, {seconds:.0f} s"))
    print("\nnumerics tests per CPU kernel setting:")
    for name, status, detail in rows:
        print(f"  {name:<14} {status:<18} {detail}")
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="these settings only")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    args = parser.parse_args(own)
    if args.list:
        for name, (extra, needed, _) in SETTINGS.items():
            print(f"{name:<14} {extra or '(no change)'} needs {needed or 'nothing'}")
        return 0
    return matrix(args.only or list(SETTINGS), pytest_args)


if __name__ == "__main__":
    sys.exit(main())
