"""Issue #16: every source meets random bytes, truncated files, lying headers and random
documents, and only ever raises an ``InspectkitError`` — in a child process under an
address-space limit, so a loader that allocated gigabytes would fail the test (with
``MemoryError``) instead of taking the machine. The properties live in
``tests/fuzz_sources.py``; ``INSPECTKIT_FUZZ_EXAMPLES`` sets examples per property."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: Address space the child may add to what it holds after importing torch, pandas and
#: PIL and reading each format once (about 3.2 GiB of mappings, 0.55 GiB resident).
HEADROOM_MIB = 768

pytest.importorskip("pandas")
if not Path("/proc/self/status").exists():  # pragma: no cover - the cap is measured there
    pytest.skip("needs /proc to measure the address space", allow_module_level=True)


def _child(*names: str, examples: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INSPECTKIT_PROGRESS": "0"}
    if examples is not None:
        env["INSPECTKIT_FUZZ_EXAMPLES"] = str(examples)
    return subprocess.run(
        [sys.executable, str(HERE / "fuzz_sources.py"), str(HEADROOM_MIB), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=HERE,
    )


def test_the_memory_cap_stops_a_loader_that_allocates_gigabytes() -> None:
    out = _child("canary")
    assert out.returncode == 1
    assert "MemoryError" in out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["canary"]["outcome"] == "FAILED"
    assert report["canary"]["peak_rss_growth_MiB"] < HEADROOM_MIB


@pytest.mark.parametrize(
    "source", ["wafer_npz", "lswmd_pickle", "voc_xml", "image_files", "folders"]
)
def test_hostile_input_gives_only_inspectkit_errors_within_bounded_memory(source: str) -> None:
    out = _child(source)
    assert out.returncode == 0, out.stderr[-6000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report[source]["outcome"] == "ok"
    assert report[source]["peak_rss_growth_MiB"] < HEADROOM_MIB
