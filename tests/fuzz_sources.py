"""Hostile input for every source, run by ``test_safety_fuzz.py`` in a child process
under an address-space limit (not collected by pytest: no ``test_`` prefix).

Each property throws random bytes, truncated and bit-flipped files, lying headers or
random documents at one source and asserts that only an ``InspectkitError`` comes out:
any other exception — a ``MemoryError`` from an allocation the limits should have
stopped included — fails it. ``main()`` runs them all with small size limits, so an
allocation far beyond them hits the process's memory cap.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inspectkit import sources
from inspectkit.errors import InspectkitError
from inspectkit.sources import Limits
from inspectkit.sources._common import IMAGE_SUFFIXES, image_size, read_image, read_mask
from inspectkit.sources.lswmd import safe_load_pickle
from inspectkit.sources.voc import parse_voc_xml

#: Limits the properties run under: small, so memory beyond them is unmistakable.
FUZZ_LIMITS = Limits(
    max_image_pixels=2**22,
    max_archive_pixels=2**24,
    max_file_bytes=2**26,
    max_pickle_items=2**20,
    max_xml_bytes=2**16,
)
EXAMPLES = int(os.environ.get("INSPECTKIT_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("INSPECTKIT_FUZZ_RANDOM") != "1",
    suppress_health_check=list(HealthCheck),
)

WORK = Path(tempfile.mkdtemp(prefix="ik-fuzz-"))


def fresh(name: str) -> Path:
    """An empty folder for one example."""
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def only_inspectkit_errors(func: Callable[[], object]) -> None:
    with contextlib.suppress(InspectkitError):
        func()


def mutate(raw: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """``raw`` cut after ``cut`` bytes (when shorter) with some bytes xor-ed."""
    out = bytearray(raw[: max(0, min(cut, len(raw)))] if cut < len(raw) else raw)
    for pos, bit in flips:
        if out:
            out[pos % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


mutations = st.tuples(
    st.integers(0, 4000), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=4)
)


# ---------------------------------------------------------------------- wafer .npz
def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


dims = st.one_of(
    st.integers(-3, 40), st.integers(0, 2**40), st.sampled_from([2**31, 2**62, 2**63 - 1])
)
member = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda shape, descr, tail: npy_header(tuple(shape), descr) + tail,
        st.lists(dims.filter(lambda d: d >= 0), max_size=3),
        st.sampled_from(["|u1", "<i8", "<i4", "<f4", "<U5", "|S3", "|O", "<c16"]),
        st.binary(max_size=200),
    ),
    st.builds(
        lambda a: npy(np.asarray(a)),
        st.one_of(
            st.lists(st.integers(-2, 300), max_size=60),
            st.lists(st.lists(st.integers(-5, 50), min_size=2, max_size=2), max_size=8),
            st.lists(st.sampled_from(["none", "Center", "", "x\ty"]), max_size=8),
            st.lists(st.floats(allow_nan=True), max_size=8),
        ),
    ),
)


def wafer_archive(members: dict[str, bytes], deflate: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(
        buf, "w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    ) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return buf.getvalue()


def valid_wafer_archive(n: int) -> bytes:
    maps = [np.ones((3 + i % 4, 5), np.uint8) for i in range(n)]
    return wafer_archive(
        {
            "flat.npy": npy(np.concatenate([m.ravel() for m in maps])),
            "shapes.npy": npy(np.array([m.shape for m in maps], np.int32)),
            "offsets.npy": npy(
                np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
            ),
            "failure_type.npy": npy(np.array(["none", "Center"] * n)[:n]),
        },
        deflate=True,
    )


@SETTINGS
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        st.builds(
            wafer_archive,
            st.dictionaries(
                st.sampled_from(
                    ["flat.npy", "shapes.npy", "offsets.npy", "failure_type.npy", "flat", "x.npy"]
                ),
                member,
                max_size=5,
            ),
            st.booleans(),
        ),
        st.builds(lambda n, m: mutate(valid_wafer_archive(n), *m), st.integers(1, 6), mutations),
    )
)
def wafer_npz(raw: bytes) -> None:
    path = fresh("npz") / "maps.npz"
    path.write_bytes(raw)
    only_inspectkit_errors(lambda: sources.load_wafer_npz(path, on_error="skip"))
    only_inspectkit_errors(lambda: sources.load(path, purpose="predict"))


# ---------------------------------------------------------------------- LSWMD pickle
def frame_pickle(protocol: int) -> bytes:
    import pandas as pd

    df = pd.DataFrame(
        {
            "waferMap": [np.ones((2, 3), np.uint8), np.zeros((3, 2), np.uint8)],
            "failureType": [np.array([["Center"]]), np.zeros((0, 0))],
            "lotName": ["lot1", "lot2"],
        }
    )
    return pickle.dumps(df, protocol=protocol)


GLOBALS = [
    ("builtins", "list"), ("builtins", "range"), ("builtins", "bytes"), ("builtins", "dict"),
    ("builtins", "set"), ("builtins", "object"), ("copyreg", "_reconstructor"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("pandas", "DataFrame"), ("pandas", "Index"), ("pandas", "RangeIndex"),
    ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.internals.managers", "BlockManager"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas", "StringDtype"),
    ("pandas.arrays", "StringArray"), ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    ("_codecs", "encode"), ("os", "system"), ("numpy.f2py.__main__", "main"),
]  # fmt: skip
OPCODES = st.one_of(
    st.sampled_from(GLOBALS).map(lambda g: f"c{g[0]}\n{g[1]}\n".encode()),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: b"J" + struct.pack("<i", v)),
    st.integers(0, 255).map(lambda v: b"K" + bytes([v])),
    st.binary(max_size=12).map(lambda b: b"C" + bytes([len(b)]) + b),
    st.text(max_size=8).map(lambda t: b"X" + struct.pack("<I", len(t.encode())) + t.encode()),
    st.integers(0, 2**32 - 1).map(lambda n: b"B" + struct.pack("<I", n)),  # BINBYTES, lying
    st.sampled_from([b"(", b")", b"]", b"}", b"N", b"\x88", b"\x89", b"\x85", b"\x86", b"\x87",
                     b"t", b"l", b"d", b"R", b"b", b"\x81", b"e", b"a", b"u", b"s", b"0", b"2",
                     b"q\x00", b"h\x00", b"\x94", b"\x93"]),
)  # fmt: skip


@SETTINGS
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda p, m: mutate(frame_pickle(p), *m), st.integers(0, 5), mutations),
        st.lists(OPCODES, max_size=30).map(lambda ops: b"\x80\x02" + b"".join(ops) + b"."),
    )
)
def lswmd_pickle(raw: bytes) -> None:
    path = fresh("pkl") / "LSWMD.pkl"
    path.write_bytes(raw)
    only_inspectkit_errors(lambda: safe_load_pickle(path))
    only_inspectkit_errors(lambda: sources.load_lswmd(path, on_error="skip"))


# ---------------------------------------------------------------------- VOC XML
xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
xml_number = st.one_of(
    st.integers(-5, 10**12).map(str), st.sampled_from(["nan", "inf", "1e400", "", "x"])
)
xml_object = st.builds(
    lambda n, a, b, c, d: (
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
    ),
    st.sampled_from(["crazing", "patches", "", "a&amp;b"]),
    xml_number,
    xml_number,
    xml_number,
    xml_number,
)
xml_document = st.builds(
    lambda fname, w, h, objs, root: (
        f"<{root}><filename>{fname}</filename><size><width>{w}</width><height>{h}</height></size>"
        + "".join(objs)
        + f"</{root}>"
    ),
    st.sampled_from(["crazing_1.jpg", "crazing_1", "../x.jpg", "", "nope.png"]),
    xml_number,
    xml_number,
    st.lists(xml_object, max_size=4),
    st.sampled_from(["annotation", "annotation", "doc"]),
)


@SETTINGS
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        xml_document.map(str.encode),
        st.builds(lambda d, m: mutate(d.encode(), *m), xml_document, mutations),
        st.just(b'<!DOCTYPE a [<!ENTITY x "xx">]><annotation>&x;</annotation>'),
        st.integers(1, 200).map(lambda n: b"<a>" * n + b"</a>" * n),
    )
)
def voc_xml(raw: bytes) -> None:
    root = fresh("voc")
    (root / "IMAGES").mkdir()
    (root / "ANNOTATIONS").mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "IMAGES" / "crazing_1.jpg")
    (root / "ANNOTATIONS" / "crazing_1.xml").write_bytes(raw)
    only_inspectkit_errors(
        lambda: parse_voc_xml(root / "ANNOTATIONS" / "crazing_1.xml", root / "IMAGES")
    )
    only_inspectkit_errors(lambda: sources.load(root))
    only_inspectkit_errors(lambda: sources.load(root, on_error="skip"))


# ---------------------------------------------------------------------- images of every suffix
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".webp": "WEBP", ".pgm": "PPM", ".ppm": "PPM"}  # fmt: skip
MODES = ["L", "RGB", "I;16", "F", "P", "1", "RGBA"]


def encoded(suffix: str, mode: str, w: int, h: int) -> bytes:
    fmt = FORMATS[suffix]
    img = Image.new("L", (w, h), 7)
    if mode in ("RGB", "P", "1", "RGBA", "F", "I;16"):
        with contextlib.suppress(ValueError, OSError):
            img = img.convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("L").save(buf, format=fmt)
    return buf.getvalue()


def lying_header(kind: str, w: int, h: int, tail: bytes) -> bytes:
    if kind == "pgm":
        return f"P5\n{w} {h}\n255\n".encode() + tail
    if kind == "ppm16":
        return f"P6\n{w} {h}\n65535\n".encode() + tail
    if kind == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + len(tail), 0, 0, 54) + info + tail
    ihdr = struct.pack(">IIBBBBB", w % 2**31, h % 2**31, 8, 0, 0, 0, 0)
    body = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(tail)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat) & 0xFFFFFFFF)
    )  # fmt: skip


sides = st.one_of(st.integers(1, 64), st.integers(1, 70_000))


@SETTINGS
@given(
    suffix=st.sampled_from(sorted(IMAGE_SUFFIXES)),
    raw=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda s, mode, w, h, m: (s, mutate(encoded(s, mode, w, h), *m)),
            st.sampled_from(sorted(IMAGE_SUFFIXES)),
            st.sampled_from(MODES),
            st.integers(1, 40),
            st.integers(1, 40),
            mutations,
        ),
        st.builds(
            lying_header,
            st.sampled_from(["pgm", "ppm16", "bmp", "png"]),
            sides,
            sides,
            st.binary(max_size=64),
        ),
    ),
    channels=st.sampled_from([None, 1, 3]),
)
def image_files(suffix: str, raw: bytes | tuple[str, bytes], channels: int | None) -> None:
    if isinstance(raw, tuple):
        suffix, raw = raw
    path = fresh("img") / f"part{suffix}"
    path.write_bytes(raw)
    only_inspectkit_errors(lambda: read_image(path, channels))
    only_inspectkit_errors(lambda: image_size(path))
    only_inspectkit_errors(lambda: read_mask(path))
    only_inspectkit_errors(lambda: sources.load_inputs([path], channels=channels).materialize())


# ---------------------------------------------------------------------- folders and masks
file_content = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda w, h: encoded(".png", "L", w, h), st.integers(1, 12), st.integers(1, 12)),
    st.builds(lambda m: mutate(encoded(".png", "L", 8, 8), *m), mutations),
    st.builds(lying_header, st.just("png"), sides, sides, st.binary(max_size=16)),
)
tree = st.dictionaries(
    st.sampled_from(
        [
            "ok/a.png", "ok/b.png", "scratch/c.png", "scratch/d.bmp",  # class folders
            "train/good/001.png", "test/good/002.png", "test/spot/003.png",  # MVTec
            "ground_truth/spot/003_mask.png",
            "MT_Free/Imgs/t1.jpg", "MT_Free/Imgs/t1.png", "MT_Crack/Imgs/t2.jpg",  # tiles
            "MT_Crack/Imgs/t2.png", "flat.png",
        ]
    ),
    file_content,
    max_size=8,
)  # fmt: skip


@SETTINGS
@given(
    files=tree,
    purpose=st.sampled_from(["train", "evaluate", "predict"]),
    task=st.sampled_from(["classify", "anomaly"]),
    on_error=st.sampled_from(["raise", "skip"]),
)
def folders(files: dict[str, bytes], purpose: str, task: str, on_error: str) -> None:
    root = fresh("tree")
    for name, raw in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(raw)

    def load() -> None:
        data = sources.load(root, purpose=purpose, task=task, on_error=on_error)  # type: ignore[arg-type]
        data.materialize()

    only_inspectkit_errors(load)


def canary() -> None:
    """Allocates (and touches) 2 GiB, as a loader without limits would: under the cap this
    must fail with ``MemoryError``, which shows the cap works."""
    np.ones(2**31, np.uint8)


PROPERTIES = {
    "canary": canary,
    "wafer_npz": wafer_npz,
    "lswmd_pickle": lswmd_pickle,
    "voc_xml": voc_xml,
    "image_files": image_files,
    "folders": folders,
}


# ---------------------------------------------------------------------- the child process
def vm_bytes() -> int:
    """The process's address-space size now (``VmSize``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def warm_up() -> None:
    """Touch every reader once on valid input, so imports and first-use buffers are in
    place before the limit is measured."""
    folder = fresh("warm")
    (folder / "maps.npz").write_bytes(valid_wafer_archive(3))
    sources.load_wafer_npz(folder / "maps.npz")
    (folder / "LSWMD.pkl").write_bytes(frame_pickle(4))
    sources.load_lswmd(folder / "LSWMD.pkl")
    for suffix in sorted(IMAGE_SUFFIXES):
        (folder / f"w{suffix}").write_bytes(encoded(suffix, "L", 8, 8))
        read_image(folder / f"w{suffix}", 3)
    voc = fresh("warm-voc")
    (voc / "IMAGES").mkdir()
    (voc / "ANNOTATIONS").mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(voc / "IMAGES" / "crazing_1.jpg")
    (voc / "ANNOTATIONS" / "crazing_1.xml").write_text(
        "<annotation><filename>crazing_1.jpg</filename></annotation>"
    )
    sources.load(voc)


def main(argv: list[str]) -> int:
    """``python fuzz_sources.py HEADROOM_MIB [PROPERTY ...]``: run the properties under an
    address-space limit of the warmed-up process's size + ``HEADROOM_MIB``; print one
    JSON line (per property: seconds, peak RSS growth) and exit 1 on any failure."""
    headroom = int(argv[0]) * 2**20
    names = argv[1:] or [n for n in PROPERTIES if n != "canary"]
    warnings.simplefilter("ignore")  # Pillow's warnings on corrupt EXIF etc.
    sources.set_limits(FUZZ_LIMITS)
    warm_up()
    base_vm = vm_bytes()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    resource.setrlimit(resource.RLIMIT_AS, (base_vm + headroom, base_vm + headroom))
    report: dict[str, object] = {
        "examples": EXAMPLES,
        "address_space_limit_MiB": round((base_vm + headroom) / 2**20),
        "baseline_vm_MiB": round(base_vm / 2**20),
    }
    failed = False
    for name in names:
        t0 = time.perf_counter()
        try:
            PROPERTIES[name]()
            outcome = "ok"
        except BaseException:
            traceback.print_exc()
            outcome = "FAILED"
            failed = True
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        report[name] = {
            "outcome": outcome,
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_growth_MiB": round((rss - base_rss) / 2**20),
        }
    shutil.rmtree(WORK, ignore_errors=True)
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
