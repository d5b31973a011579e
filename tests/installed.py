"""The plugin as a user gets it: a wheel built from this checkout, installed outside the repository.

``installed_plugin`` (session-scoped; tests/conftest.py makes it available to every test module)
builds the wheel from a copy of the tracked files (``pip wheel --no-deps --no-build-isolation``),
installs it with ``pip install --no-deps --target`` into a temporary folder, and returns an
:class:`InstalledPlugin` that runs Python code in a subprocess, from a folder outside the
repository, with only that folder and the interpreter's own site-packages (torch, detectron2) on
the path: the repository's sources are not importable there.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["InstalledPlugin", "installed_plugin"]


@dataclass
class InstalledPlugin:
    """A wheel installed into ``target``; ``workdir`` is an empty folder outside the repository."""

    target: str
    workdir: str

    def env(self, **extra: str) -> Dict[str, str]:
        """The environment of the subprocesses: ``PYTHONPATH`` = ``target`` only."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return dict(env, PYTHONPATH=self.target, **extra)

    def run(self, code: str, *, args: Sequence[str] = (), **kwargs) -> subprocess.CompletedProcess:
        """Run ``code`` (dedented) with this interpreter (``python -c``); see :meth:`python`."""
        return self.python(["-c", textwrap.dedent(code), *args], **kwargs)

    def run_module(
        self, module: str, *, args: Sequence[str] = (), **kwargs
    ) -> subprocess.CompletedProcess:
        """Run ``python -m module args...`` (e.g. the predict tool); see :meth:`python`."""
        return self.python(["-m", module, *args], **kwargs)

    def python(
        self,
        arguments: Sequence[str],
        *,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        timeout: float = 300,
        prefix: Sequence[str] = (),
    ) -> subprocess.CompletedProcess:
        """Run this interpreter with ``arguments``; stdout and stderr captured as text.

        Args:
            cwd: default ``workdir``.
            env: default :meth:`env`.
            prefix: a command that runs the interpreter (e.g. ``setpriv ...``).
        """
        return subprocess.run(
            [*prefix, sys.executable, *arguments],
            cwd=cwd or self.workdir,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _source_files() -> Sequence[str]:
    """The checkout's files that git tracks or would track (not ignored ones such as outputs)."""
    listing = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listing.stdout.decode().split("\0") if name]


def build_wheel(destination: str) -> str:
    """Build the plugin's wheel from a copy of the checkout; returns the wheel's path."""
    source = os.path.join(destination, "source")
    for name in _source_files():
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(source, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(source, name))
    wheels = os.path.join(destination, "wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", wheels, source],
        check=True,
        capture_output=True,
    )
    (wheel,) = os.listdir(wheels)
    return os.path.join(wheels, wheel)


@pytest.fixture(scope="session")
def installed_plugin(tmp_path_factory) -> InstalledPlugin:
    """The wheel of this checkout installed into a temporary ``--target`` folder."""
    base = str(tmp_path_factory.mktemp("installed"))
    wheel = build_wheel(base)
    target = os.path.join(base, "site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    workdir = os.path.join(base, "project")
    os.makedirs(workdir)
    return InstalledPlugin(target, workdir)
