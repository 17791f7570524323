"""Archive runs on a local Ray with 2 CPUs (``engine="ray"``): rows equal to
single-process ``Pipeline.run`` on real data, resume after an interrupted run, an error
row for a corrupt file, and a worker process killed mid-run losing nothing.

Skipped where Ray is not installed (``pip install 'inspectkit[ray]'``; ``.ci/run``
installs it)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'inspectkit[ray]'")

from scale_support import (  # noqa: E402
    WAFER_MODEL,
    assert_rows_equal,
    key_of,
    padim_model,
    part_rows,
    reference_rows,
    tile_subset,
)

from inspectkit.scale import ChunkDone, ScaleError, inspect_archive, read_results  # noqa: E402

pytestmark = [pytest.mark.realdata, pytest.mark.distributed]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module (``inspect_archive`` uses a Ray this
    process started as it is)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiles(magnetic_tile_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray-tiles")
    return {
        "model": padim_model(magnetic_tile_dir, root / "padim"),
        "data": tile_subset(magnetic_tile_dir, root / "data", per_class=25),
    }


def test_ray_rows_equal_single_process_pipeline_run(
    local_ray, wm811k_dir: Path, tiles: dict[str, Path], tmp_path: Path
) -> None:
    """623 real wafer maps (a classifier) and 150 magnetic tiles (a detector) on two
    workers: every row equals ``Pipeline.run`` (verdicts and classes exactly, scores up to
    float32 rounding)."""
    npz = wm811k_dir / "WM811K_train_1_split.npz"
    summary = inspect_archive(
        WAFER_MODEL, npz, tmp_path / "wafer", num_workers=2, batch_size=64, progress=False
    )
    assert (summary.engine, summary.workers, summary.scored, summary.errors) == ("ray", 2, 623, 0)
    rows = read_results(tmp_path / "wafer").to_pylist()
    assert_rows_equal(rows, reference_rows(WAFER_MODEL, [str(npz)], batch_size=64))

    workers: set[str] = set()
    summary = inspect_archive(
        tiles["model"],
        tiles["data"],
        tmp_path / "tiles",
        num_workers=2,
        progress=False,
        callback=lambda c: workers.add(c.worker),
    )
    assert summary.scored == 150 and sum(summary.verdicts.values()) == 150
    # ten chunks of about a second each: both workers, neither of them this process
    assert len(workers) == 2 and all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
    rows = read_results(tmp_path / "tiles").to_pylist()
    assert_rows_equal(rows, reference_rows(tiles["model"], [str(tiles["data"])], batch_size=16))


def test_ray_corrupt_file_gives_an_error_row(
    local_ray, tiles: dict[str, Path], tmp_path: Path
) -> None:
    good = sorted((tiles["data"] / "MT_Free" / "Imgs").glob("*.jpg"))[:7]
    folder = tmp_path / "parts"
    folder.mkdir()
    for f in good:
        shutil.copyfile(f, folder / f.name)
    broken = folder / f"{good[3].stem}-cut.jpg"
    broken.write_bytes(good[3].read_bytes()[:500])
    summary = inspect_archive(
        tiles["model"], folder, tmp_path / "out", num_workers=2, batch_size=3, progress=False
    )
    assert (summary.scored, summary.errors) == (8, 1)
    rows = {key_of(r): r for r in read_results(tmp_path / "out").to_pylist()}
    assert len(rows) == 8
    bad = rows.pop((str(broken), -1))
    assert bad["error"].startswith(str(broken)) and "truncated" in bad["error"]
    assert all(r["error"] is None and r["verdict"] in ("good", "defect") for r in rows.values())


class Interrupted(Exception):
    pass


def test_resume_after_an_interrupted_run_scores_nothing_twice(
    local_ray, wm811k_dir: Path, tmp_path: Path
) -> None:
    npz = wm811k_dir / "WM811K_train_1_split.npz"
    out = tmp_path / "out"
    seen: list[ChunkDone] = []

    def stop_after_two(chunk: ChunkDone) -> None:
        seen.append(chunk)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        inspect_archive(
            WAFER_MODEL, npz, out, num_workers=1, batch_size=32, progress=False,
            callback=stop_after_two,
        )  # fmt: skip
    resumed = inspect_archive(WAFER_MODEL, npz, out, num_workers=2, batch_size=32, progress=False)
    done_before = resumed.already_done
    assert 64 <= done_before < 623
    assert resumed.scored == 623 - done_before
    assert resumed.duplicates_dropped == 0
    rows = read_results(out).to_pylist()
    assert len(rows) == len({key_of(r) for r in rows}) == 623
    assert sum(part_rows(out).values()) == 623


def test_a_killed_worker_loses_nothing(local_ray, wm811k_dir: Path, tmp_path: Path) -> None:
    """SIGKILL the worker process after its first chunk: Ray starts another, the chunk in
    flight is retried, and every map has exactly one row."""
    npz = wm811k_dir / "WM811K_train_1_split.npz"
    workers: list[str] = []

    def kill_first_worker(chunk: ChunkDone) -> None:
        if not workers:
            os.kill(int(chunk.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        workers.append(chunk.worker)

    summary = inspect_archive(
        WAFER_MODEL, npz, tmp_path / "out", num_workers=1, batch_size=32, progress=False,
        callback=kill_first_worker,
    )  # fmt: skip
    assert len(set(workers)) >= 2, "the worker was not replaced"
    assert workers[-1] != workers[0]
    assert (summary.scored, summary.errors) == (623, 0)
    rows = read_results(tmp_path / "out").to_pylist()
    assert len(rows) == len({key_of(r) for r in rows}) == 623
    assert_rows_equal(rows, reference_rows(WAFER_MODEL, [str(npz)], batch_size=32))


def test_more_workers_than_the_cluster_has_cpus_is_refused(local_ray, tmp_path: Path) -> None:
    import numpy as np

    from inspectkit.sources import save_wafer_npz

    npz = save_wafer_npz(tmp_path / "lot.npz", [np.ones((5, 5), np.uint8)] * 3, [None] * 3)
    with pytest.raises(ScaleError, match="need 3 CPUs; the Ray cluster has 2"):
        inspect_archive(WAFER_MODEL, npz, tmp_path / "out", num_workers=3, progress=False)
