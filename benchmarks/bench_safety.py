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
  a 49-byte pickle of ``list(range(3e7))``, ``parse_voc_xml('/dev/zero')``, an ``.npy``
  header claiming 10^12 elements, ...), each read by ``sources`` in a fresh process: the
  error it gives and the peak RSS of that process (``getrusage(RUSAGE_CHILDREN)`` in a
  small parent that starts it), beside a process that imports the same and reads nothing.
  Each reader runs under an 8 GiB address-space cap, so a regression fails instead of
  taking the machine.

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


# ---------------------------------------------------------------------- bombs
def _pickle(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _int(v: int) -> bytes:
    return b"J" + v.to_bytes(4, "little", signed=True)


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _npy(arr: object) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _wafer_archive(path: Path, h: int, w: int, flat: bytes | None = None) -> Path:
    """A wafer ``.npz`` of one h×w map; ``flat`` given: that member's raw bytes, else
    h×w ones streamed through deflate (2 GB inflate from about 2 MB)."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if flat is None:
            with zf.open("flat.npy", "w", force_zip64=True) as fh:
                fh.write(_npy_header((h * w,)))
                block = b"\x01" * (1 << 24)
                left = h * w
                while left:
                    fh.write(block[: min(left, len(block))])
                    left -= min(left, len(block))
        else:
            zf.writestr("flat.npy", flat)
        zf.writestr("shapes.npy", _npy(np.array([[h, w]], np.int64)))
        zf.writestr("offsets.npy", _npy(np.array([0, min(h * w, 2**63 - 1)], np.int64)))
        zf.writestr("failure_type.npy", _npy(np.array(["none"])))
    return path


def _png_header(path: Path, w: int, h: int) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def _bomb_files(work: Path) -> list[tuple[str, str, Path]]:
    """(name, reader, file) for every hostile input; reader names the call in READER."""
    lst = _global("__builtin__", "list")
    rng = _global("__builtin__", "range")
    quad = 20_000  # DataFrame(0, index=L, columns=L): 20,000² cells = 3.2 GB if allowed
    files = {
        "npz_40000x50000_map.npz": _wafer_archive(work / "bomb.npz", 40_000, 50_000),
        "npz_header_1e12_elements.npz": _wafer_archive(
            work / "lying.npz", 10, 10, flat=_npy_header((10**12,)) + b"\x01" * 100
        ),
        "npz_shapes_overflow_int64.npz": _wafer_archive(
            work / "overflow.npz", 2**62, 4, flat=_npy_header((4,)) + b"\x01" * 4
        ),
        "pickle_list_range_3e7.pkl": _pickle(lst, rng, _int(30_000_000), b"\x85R\x85R"),
        "pickle_bytes_2e9.pkl": _pickle(
            _global("__builtin__", "bytes"), _int(2_000_000_000), b"\x85R"
        ),
        "pickle_dataframe_20000_squared.pkl": _pickle(
            _global("pandas.core.frame", "DataFrame"),
            _int(0),
            b"]q\x00(" + b"K\x00" * quad + b"e",
            b"h\x00\x87R",
        ),
        "pickle_f2py_main.pkl": b"cnumpy.f2py.__main__\nmain\n)R.",
        "pickle_reconstructor_dataframe.pkl": (
            b"ccopy_reg\n_reconstructor\n(cpandas.core.frame\nDataFrame\nc__builtin__\nobject\nNtR."
        ),
        "png_header_60000x60000.png": _png_header(work / "huge.png", 60_000, 60_000),
    }
    out = []
    for name, content in files.items():
        path = content if isinstance(content, Path) else work / name
        if not isinstance(content, Path):
            path.write_bytes(content)
        reader = {".npz": "npz", ".pkl": "pickle", ".png": "image"}[Path(name).suffix]
        out.append((name.rsplit(".", 1)[0], reader, path))
    out.append(("voc_xml_dev_zero", "xml", Path("/dev/zero")))
    return out


READER = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))  # a safety net only
    from inspectkit.sources import load_lswmd, load_wafer_npz
    from inspectkit.sources._common import read_image
    from inspectkit.sources.voc import parse_voc_xml
    kind, path = sys.argv[1:3]
    read = {"npz": load_wafer_npz, "pickle": load_lswmd, "image": read_image,
            "xml": parse_voc_xml, "none": lambda p: None}[kind]
    try:
        read(path)
        print("loaded")
    except BaseException as exc:
        print(type(exc).__name__ + ": " + " ".join(str(exc).split())[:300])
    """
)
PARENT = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    t = __import__("time").perf_counter()
    p = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]],
                       capture_output=True, text=True)
    print(json.dumps({"rc": p.returncode, "out": p.stdout.strip().splitlines()[-1:],
                      "stderr_tail": p.stderr.strip()[-300:],
                      "seconds": round(__import__("time").perf_counter() - t, 2),
                      "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))
    """
)


def _read_in_child(kind: str, path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PARENT, READER, kind, str(path)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    return json.loads(proc.stdout)


def bombs() -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="ik-bombs-"))
    try:
        files = _bomb_files(work)
        out: dict[str, object] = {"baseline_imports_only": _read_in_child("none", work)}
        for name, kind, path in files:
            result = _read_in_child(kind, path)
            size = path.stat().st_size if path.is_file() else None
            out[name] = {"file_bytes": size, **result}
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=110, help="kills per swap path")
    ap.add_argument("--loads", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only", choices=["kills", "mixed", "bombs"], action="append", help="run these parts"
    )
    args = ap.parse_args()
    parts = set(args.only or ["kills", "mixed", "bombs"])
    t0 = time.time()
    result = {
        "benchmark": "safety",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "load_avg_start": os.getloadavg(),
    }
    if "kills" in parts:
        result["kills"] = kills(args.kills, args.seed)
    if "mixed" in parts:
        result["mixed"] = mixed(args.loads)
    if "bombs" in parts:
        result["bombs"] = bombs()
    result["load_avg_end"] = os.getloadavg()
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
