"""Test support for plugins: build a tiny package in a temp dir, install it into a
``--target`` folder, and run Python in a fresh process that sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest


def install_package(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (name -> text, dedented) into ``root/src`` and pip-install that
    package into ``root/site`` (no dependencies, no build isolation); return the site."""
    src = root / "src"
    src.mkdir(parents=True)
    for name, text in files.items():
        (src / name).write_text(textwrap.dedent(text))
    target = root / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"could not install the test plugin: {proc.stderr[-2000:]}")
    return target


def env_with(*paths: Path) -> dict[str, str]:
    """This process's environment with ``paths`` first on ``PYTHONPATH``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, paths), *sys.path]))


def run_python(
    code: str, *args: str, paths: tuple[Path, ...] = (), cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``paths`` importable."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env_with(*paths),
        cwd=cwd,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a script printed on its last line (the run must have succeeded)."""
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
