"""Issue #16 at the data boundary: nothing a data file contains runs code, exhausts memory
or breaks a set. Pickles resolve globals from an exact allow-list without importing what
they name (5); sizes are checked from headers against configurable limits before
anything is allocated (6); file names with control characters or undecodable bytes load
(9); ``copyreg._reconstructor(DataFrame, object)`` is a clear error (12)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inspectkit import sources
from inspectkit.errors import ConfigError, DataError, UnsafePickleError
from inspectkit.sources import Limits, SizeLimitError, load_lswmd, load_wafer_npz
from inspectkit.sources._common import ImageReader, image_size, read_image
from inspectkit.sources.lswmd import safe_load_pickle
from inspectkit.sources.voc import parse_voc_xml

pd = pytest.importorskip("pandas")


@pytest.fixture(autouse=True)
def _process_limits():
    """Every test starts and ends with the environment's limits."""
    before = sources.set_limits(None)
    yield
    sources.set_limits(before)


# ---------------------------------------------------------------------- pickles (5, 6, 12)
@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("numpy.f2py.__main__", "main"),  # runs f2py's main(), which calls sys.exit
        ("numpy.conftest", "anything"),
        ("pandas.conftest", "anything"),
        ("numpy.tests.test_public_api", "anything"),
        ("numpy.testing", "assert_equal"),
        ("numpy", "load"),
    ],
)
def test_a_pickle_naming_a_module_never_imports_it(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(f"c{module}\n{name}\n)R.".encode())
    already = module in sys.modules
    with pytest.raises(UnsafePickleError, match=rf"LSWMD\.pkl: .*{module}\.{name}.*refused"):
        load_lswmd(path)
    assert already or module not in sys.modules  # refused without importing it


def test_the_f2py_pickle_leaves_the_host_process_alive(tmp_path: Path) -> None:
    # before: f2py's main() ran and called sys.exit; `inspectkit train` exited 0, no model
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(b"cnumpy.f2py.__main__\nmain\n)R.")
    code = (
        "import sys\nfrom inspectkit.sources import load_lswmd\n"
        f"try:\n    load_lswmd({str(path)!r})\n"
        "except Exception as exc:\n    print(type(exc).__name__)\n"
        "print('alive', 'numpy.f2py' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["UnsafePickleError", "alive", "False"]


def _protocol2(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


GLOBAL = lambda module, name: f"c{module}\n{name}\n".encode()  # noqa: E731
INT = lambda v: b"J" + struct.pack("<i", v)  # noqa: E731


@pytest.mark.parametrize(
    ("program", "what"),
    [
        # list(range(3 * 10**7)): 45 bytes, 1.7 GB before
        (
            _protocol2(
                GLOBAL("__builtin__", "list"),
                GLOBAL("__builtin__", "range"),
                INT(30_000_000),
                b"\x85R\x85R",
            ),
            r"range\(0, 30000000\)",
        ),
        (_protocol2(GLOBAL("__builtin__", "bytes"), INT(2_000_000_000), b"\x85R"), r"bytes"),
        (_protocol2(GLOBAL("__builtin__", "bytearray"), INT(200_000_000), b"\x85R"), r"bytearray"),
        # numpy.ndarray((10**9,)) called directly
        (
            _protocol2(GLOBAL("numpy", "ndarray"), INT(1_000_000_000), b"\x85\x85R"),
            r"ndarray",
        ),
        # _reconstruct(ndarray, (10**9,), b'b') allocates the shape it is given
        (
            _protocol2(
                GLOBAL("numpy.core.multiarray", "_reconstruct"),
                GLOBAL("numpy", "ndarray"),
                INT(1_000_000_000),
                b"\x85C\x01b\x87R",
            ),
            r"array of shape",
        ),
        # _new_Index(RangeIndex, {start: 0, stop: 10**9}): an index of 10**9 entries
        (
            _protocol2(
                GLOBAL("pandas.core.indexes.base", "_new_Index"),
                GLOBAL("pandas", "RangeIndex"),
                b"}(X\x05\x00\x00\x00start",
                INT(0),
                b"X\x04\x00\x00\x00stop",
                INT(1_000_000_000),
                b"u\x86R",
            ),
            r"RangeIndex of 1,000,000,000 entries",
        ),
    ],
)
def test_a_pickle_cannot_create_a_large_object_from_a_small_size(
    tmp_path: Path, program: bytes, what: str
) -> None:
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(program)
    assert len(program) < 100
    with pytest.raises(SizeLimitError, match=rf"LSWMD\.pkl: .*{what}.*max_pickle_items"):
        safe_load_pickle(path)


def test_the_pickle_budget_is_a_limit_that_can_be_raised(tmp_path: Path) -> None:
    path = tmp_path / "r.pkl"
    path.write_bytes(
        _protocol2(
            GLOBAL("__builtin__", "list"), GLOBAL("__builtin__", "range"), INT(2000), b"\x85R\x85R"
        )
    )
    with pytest.raises(SizeLimitError, match="max_pickle_items=1,000"):
        safe_load_pickle(path, limits={"max_pickle_items": 1000})
    assert safe_load_pickle(path, limits={"max_pickle_items": 5000}) == list(range(2000))


def test_calling_dataframe_directly_is_refused(tmp_path: Path) -> None:
    # DataFrame(0, index=L, columns=L) allocates len(L)**2 cells from two short lists
    program = (
        b"\x80\x02"
        + GLOBAL("pandas.core.frame", "DataFrame")
        + INT(0)
        + b"]q\x00(K\x00K\x01e"  # a list, memoised
        + b"h\x00"  # the same list again
        + b"\x87R."
    )
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(program)
    with pytest.raises(UnsafePickleError, match=r"calls DataFrame\(\.\.\.\) itself"):
        load_lswmd(path)


def test_a_dataframe_rebuilt_without_its_data_is_a_clear_error(tmp_path: Path) -> None:
    # copyreg._reconstructor(DataFrame, object) with no state: before, AttributeError/
    # RecursionError from pandas (exit 1)
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(
        b"ccopy_reg\n_reconstructor\n(cpandas.core.frame\nDataFrame\nc__builtin__\nobject\nNtR."
    )
    with pytest.raises(DataError, match=r"LSWMD\.pkl: holds a DataFrame that cannot be read"):
        load_lswmd(path)
    other_base = tmp_path / "base.pkl"
    other_base.write_bytes(
        b"ccopy_reg\n_reconstructor\n(cpandas.core.frame\nDataFrame\nc__builtin__\ndict\nNtR."
    )
    with pytest.raises(UnsafePickleError, match="only object is allowed"):
        load_lswmd(other_base)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_real_dataframe_pickles_of_every_protocol_still_load(tmp_path: Path, protocol: int) -> None:
    maps = [np.ones((3 + i, 4), np.uint8) for i in range(3)]
    df = pd.DataFrame(
        {
            "waferMap": maps,
            "failureType": [np.array([["Center"]]), np.zeros((0, 0)), np.array([["none"]])],
            "lotName": ["lot1", "lot1", "lot2"],
        }
    )
    path = tmp_path / "LSWMD.pkl"
    df.to_pickle(path, protocol=protocol)
    s = load_lswmd(path)
    assert s.labels == ["Center", None, "none"] and [x.group for x in s.samples][2] == "lot2"
    assert type(safe_load_pickle(path)) is pd.DataFrame


def _arrow_frame_pickle(tmp_path: Path) -> bytes:
    pa = pytest.importorskip("pyarrow", reason="Arrow-backed text needs pyarrow")
    df = pd.DataFrame(
        {
            "waferMap": [np.ones((3, 4), np.uint8), np.zeros((2, 2), np.uint8)],
            "failureType": pd.array(["Center", "none"], dtype=pd.StringDtype("pyarrow")),
            "lotName": pd.array(["lot1", "lot2"], dtype=pd.StringDtype("pyarrow")),
        }
    )
    assert isinstance(df["lotName"].array._pa_array, pa.ChunkedArray)
    return pickle.dumps(df, protocol=5)


def test_a_pandas_frame_with_arrow_backed_text_loads(tmp_path: Path) -> None:
    """pandas 3 with pyarrow stores text columns as Arrow arrays: they load, as text."""
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(_arrow_frame_pickle(tmp_path))
    s = load_lswmd(path)
    assert s.labels == ["Center", "none"]
    assert [x.group for x in s.samples] == ["lot1", "lot2"]
    df = safe_load_pickle(path)
    assert type(df) is pd.DataFrame and type(df["lotName"].array) is pd.arrays.ArrowStringArray


def test_an_arrow_column_with_offsets_out_of_bounds_is_a_data_error(tmp_path: Path) -> None:
    raw = _arrow_frame_pickle(tmp_path)
    offsets = struct.pack("<4q", 0, 4, 8, 10**6)  # the last offset points far past the data
    good = struct.pack("<3q", 0, 4, 8)  # "lot1lot2": the lotName column's offsets
    assert raw.count(good) == 1
    # same length bytes: replace the three offsets by three others with a bad end
    bad = raw.replace(good, offsets[8:])
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(bad)
    with pytest.raises(DataError, match=r"LSWMD\.pkl.*(corrupt|Arrow)"):
        load_lswmd(path)


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"large_string", b"large_binary"), (b"_restore_array", b"_restore_table")],
)
def test_arrow_pieces_other_than_a_string_column_are_refused(
    tmp_path: Path, old: bytes, new: bytes
) -> None:
    raw = _arrow_frame_pickle(tmp_path)
    assert len(old) == len(new) and old in raw
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(raw.replace(old, new))
    with pytest.raises(UnsafePickleError, match="refused"):
        load_lswmd(path)


def test_memory_errors_of_a_lying_length_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x.")  # BINBYTES8 of 2**62
    with pytest.raises(DataError, match=r"LSWMD\.pkl"):
        safe_load_pickle(path)


# ---------------------------------------------------------------------- wafer .npz (6)
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, raw in members.items():
            zf.writestr(f"{name}.npy", raw)
    return path


def _wafer_members(h: int, w: int, flat: bytes | None = None) -> dict[str, bytes]:
    return {
        "flat": flat if flat is not None else _npy(np.ones(h * w, np.uint8)),
        "shapes": _npy(np.array([[h, w]], np.int64)),
        "offsets": _npy(np.array([0, h * w], np.int64)),
        "failure_type": _npy(np.array(["none"])),
    }


def test_a_40000_by_50000_map_is_refused_before_its_pixels_are_read(tmp_path: Path) -> None:
    # the shapes member says 40000×50000; flat (2 GB once inflated) is never read
    path = _archive(tmp_path / "bomb.npz", _wafer_members(40_000, 50_000, flat=b"never read"))
    with pytest.raises(SizeLimitError, match=r"map 0 is 40000×50000 pixels.*max_image_pixels"):
        load_wafer_npz(path)


def test_an_archive_that_inflates_to_more_than_the_limit_is_refused(tmp_path: Path) -> None:
    # a deflate bomb: 4 MB of ones in a few kB, over a lowered archive limit
    path = _archive(tmp_path / "many.npz", _wafer_members(2000, 2000))
    assert path.stat().st_size < 50_000
    with pytest.raises(SizeLimitError, match=r"many\.npz\[flat\].*max_archive_pixels=1,000,000"):
        load_wafer_npz(path, limits={"max_archive_pixels": 1_000_000})
    assert len(load_wafer_npz(path)) == 1  # within the defaults


@pytest.mark.parametrize(
    ("flat", "match"),
    [
        (_npy_header((10**12,)) + b"\x01" * 100, r"\[flat\].*1,000,000,000,000.*max_file_bytes"),
        (_npy_header((10**6,)) + b"\x01" * 100, r"holds 100 bytes of data \(a lying header\)"),
        (_npy_header((4,), "|O") + b"\x01" * 4, r"holds Python objects"),
        (b"\x93NUMPY\x09\x00garbage", r"corrupt or truncated npz"),
    ],
)
def test_lying_npy_headers_are_refused_from_the_header(
    tmp_path: Path, flat: bytes, match: str
) -> None:
    path = _archive(tmp_path / "lying.npz", _wafer_members(10, 10, flat=flat))
    with pytest.raises(DataError, match=match):
        load_wafer_npz(path)


def test_shapes_whose_product_overflows_int64_are_refused(tmp_path: Path) -> None:
    members = _wafer_members(2, 2)
    members["shapes"] = _npy(np.array([[2**62, 4]], np.int64))
    path = _archive(tmp_path / "overflow.npz", members)
    with pytest.raises(SizeLimitError, match=r"map 0 is 4611686018427387904×4 pixels"):
        load_wafer_npz(path)


@pytest.mark.realdata
def test_every_public_wafer_file_passes_the_default_limits(wm811k_dir: Path) -> None:
    largest = max(wm811k_dir.glob("*.npz"), key=lambda p: p.stat().st_size)
    maps = load_wafer_npz(largest)
    assert len(maps) > 10_000
    assert max(m.shape[1] * m.shape[2] for m in maps.images) < Limits().max_image_pixels


# ---------------------------------------------------------------------- images (6)
def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w×h 8-bit gray pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def test_an_image_header_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    big = _png_header_only(tmp_path / "huge.png", 60_000, 60_000)  # over Pillow's own ceiling
    with pytest.raises(SizeLimitError, match=r"huge\.png: .*3,600,000,000.*max_image_pixels"):
        read_image(big)
    mid = _png_header_only(tmp_path / "mid.png", 12_000, 10_000)  # 120 MP: ours decides
    with pytest.raises(SizeLimitError, match=r"mid\.png: image is 12000×10000 \(W×H\) pixels"):
        image_size(mid)
    with pytest.raises(DataError, match="corrupt or truncated"):  # allowed: then decoded
        read_image(mid, limits={"max_image_pixels": 150_000_000})


def test_the_pixel_limit_is_configurable_per_call_process_and_environment(tmp_path: Path) -> None:
    # Pillow's own threshold (89.5 MP) warned and could not be changed; ours can
    png = tmp_path / "part.png"
    Image.fromarray(np.zeros((100, 300), np.uint8)).save(png)
    assert read_image(png).shape == (1, 100, 300)
    with pytest.raises(SizeLimitError, match="max_image_pixels=20,000"):
        read_image(png, limits=Limits(max_image_pixels=20_000))
    parts = sources.load_inputs([png], limits={"max_image_pixels": 20_000})
    with pytest.raises(SizeLimitError):  # a lazy set keeps the limits it was loaded with
        parts.images[0]
    previous = sources.set_limits(max_image_pixels=20_000)
    assert previous == Limits.from_env()
    with pytest.raises(SizeLimitError):
        read_image(png)
    assert sources.load_inputs([png], limits=Limits()).images[0].shape == (1, 100, 300)
    sources.set_limits(previous)
    env = {**os.environ, "INSPECTKIT_MAX_IMAGE_PIXELS": "20000"}
    code = f"from inspectkit.sources._common import read_image; read_image({str(png)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "SizeLimitError" in out.stderr and "INSPECTKIT_MAX_IMAGE_PIXELS" in out.stderr


def test_limits_refuse_nonsense_and_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="max_image_pixels must be a whole number"):
        Limits(max_image_pixels=0)
    with pytest.raises(ConfigError, match="unknown limit"):
        sources.set_limits(max_pixels=5)
    monkeypatch.setenv("INSPECTKIT_MAX_XML_BYTES", "lots")
    with pytest.raises(ConfigError, match="INSPECTKIT_MAX_XML_BYTES='lots'"):
        Limits.from_env()
    monkeypatch.setenv("INSPECTKIT_MAX_XML_BYTES", "2_000")
    assert Limits.from_env().max_xml_bytes == 2000


def test_readers_compare_by_their_limits() -> None:
    assert ImageReader(1) == ImageReader(1)
    assert ImageReader(1, Limits(max_image_pixels=5)) != ImageReader(1)


@pytest.mark.realdata
def test_a_deeppcb_image_passes_the_default_limits(data_root: Path) -> None:
    found = sorted((data_root / "deeppcb").rglob("*_test.jpg"))
    if not found:
        pytest.skip("deeppcb not found")
    assert read_image(found[0]).shape[-2:] == (640, 640)


# ---------------------------------------------------------------------- XML (6)
def test_xml_from_dev_zero_or_a_pipe_is_refused_at_once(tmp_path: Path) -> None:
    # before: parse_voc_xml('/dev/zero') read without limit (killed at 22 GB)
    with pytest.raises(DataError, match="not a regular file"):
        parse_voc_xml("/dev/zero")
    fifo = tmp_path / "a.xml"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def parse() -> None:
        try:
            parse_voc_xml(fifo)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=parse, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and isinstance(result[0], DataError)


def test_a_large_xml_is_refused_by_a_bounded_read(tmp_path: Path) -> None:
    xml = tmp_path / "big.xml"
    xml.write_bytes(b"<annotation>" + b" " * (2 << 20) + b"</annotation>")
    with pytest.raises(SizeLimitError, match=r"big\.xml: .*max_xml_bytes=1,048,576"):
        parse_voc_xml(xml)
    with pytest.raises(DataError, match=r"filename|image"):  # read, parsed with a higher limit
        parse_voc_xml(xml, limits={"max_xml_bytes": 4 << 20})


# ---------------------------------------------------------------------- file names (9)
NAMES = [b"a\tb.png", b"LOT42_part7.png\nok 1.000\nx.png", b"c\xfe.png", b"plain.png"]


def test_file_and_folder_names_with_control_characters_or_bad_bytes_load(tmp_path: Path) -> None:
    # before: labels escaped but classes not (a set that could not be built), or a
    # pydantic ValidationError for undecodable bytes, even with on_error="skip"
    root = os.fsencode(tmp_path / "tree")
    for cls in (b"ok", b"bad\xffcls", b"tab\tcls"):
        os.makedirs(root + b"/" + cls)
        for i, name in enumerate(NAMES):
            with open(root + b"/" + cls + b"/" + name, "wb") as fh:
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(fh, format="PNG")
    data = sources.load(os.fsdecode(root), on_error="skip")
    assert data.classes == ["bad\\xffcls", "ok", "tab\\tcls"] and not data.skipped
    assert all(s.id.isprintable() and s.label in data.classes for s in data.samples)
    parts = sources.load_inputs([os.fsdecode(root)])
    assert len(parts) == 12 and all(s.source.isprintable() for s in parts.samples)
    assert parts.materialize().images.shape == (12, 1, 8, 8)  # the files themselves are read
