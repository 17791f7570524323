"""``LSWMD.pkl``: real pandas pickles load; malicious pickles are refused before running."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inspectkit.errors import DataError, InspectkitError, UnsafePickleError
from inspectkit.sources import load_lswmd, load_wafer_maps
from inspectkit.sources.lswmd import safe_load_pickle

pd = pytest.importorskip("pandas")


def lswmd_frame(n: int = 6, *, object_strings: bool = False) -> pd.DataFrame:
    """A small DataFrame laid out like the original LSWMD.pkl."""
    rng = np.random.default_rng(7)
    maps = [rng.integers(0, 3, size=(10 + i, 8 + 2 * i)).astype(np.uint8) for i in range(n)]
    types = [
        np.array([["Edge-Ring"]]),
        np.array([["none"]]),
        np.zeros((0, 0)),
        np.array([["Scratch"]]),
    ]
    tt = [
        np.array([["Training"]]),
        np.array([["Test"]]),
        np.zeros((0, 0)),
        np.array([["Training"]]),
    ]
    df = pd.DataFrame(
        {
            "waferMap": maps,
            "dieSize": [1683.0 + i for i in range(n)],
            "lotName": [f"lot{i // 2}" for i in range(n)],
            "waferIndex": [float(i % 25 + 1) for i in range(n)],
            "trianTestLabel": [tt[i % 4] for i in range(n)],
            "failureType": [types[i % 4] for i in range(n)],
        }
    )
    if object_strings:
        df["lotName"] = df["lotName"].astype(object)
    return df


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("object_strings", [False, True])
def test_lswmd_pickle_loads_maps_labels_and_lots(
    tmp_path: Path, protocol: int, object_strings: bool
) -> None:
    df = lswmd_frame(object_strings=object_strings)
    path = tmp_path / "LSWMD.pkl"
    df.to_pickle(path, protocol=protocol)
    s = load_wafer_maps(path)  # dispatches on the suffix
    assert s.kind == "wafer" and len(s) == 6
    assert s.labels == ["Edge-Ring", "none", None, "Scratch", "Edge-Ring", "none"]
    for got, want in zip(s.images, df["waferMap"]):
        assert got.dtype == torch.uint8 and np.array_equal(got[0].numpy(), want)
    assert [x.group for x in s.samples] == ["lot0", "lot0", "lot1", "lot1", "lot2", "lot2"]
    m = s.samples[0].meta
    assert m["wafer_index"] == 1 and m["die_size"] == 1683 and m["lswmd_split"] == "Training"
    assert s.samples[2].meta["lswmd_split"] is None


def test_unlabelled_rows_can_be_skipped_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "LSWMD.pkl"
    lswmd_frame().to_pickle(path)
    s = load_lswmd(path, unlabelled="skip")
    assert None not in s.labels and len(s) == 5
    assert len(load_lswmd(path, limit=3)) == 3


def test_bad_maps_raise_or_are_skipped(tmp_path: Path) -> None:
    df = lswmd_frame(4)
    bad = df.at[1, "waferMap"].copy()
    bad[0, 0] = 7
    df.at[1, "waferMap"] = bad
    nan = df.at[3, "waferMap"].astype(float)
    nan[2, 2] = np.nan
    df.at[3, "waferMap"] = nan
    path = tmp_path / "LSWMD.pkl"
    df.to_pickle(path)
    with pytest.raises(DataError, match=r"LSWMD\.pkl\[row 1\].*code 7"):
        load_lswmd(path)
    s = load_lswmd(path, on_error="skip")
    assert [x.meta["row"] for x in s.samples] == [0, 2]
    assert len(s.skipped) == 2 and "NaN/inf" in s.skipped[1]


def test_unknown_class_with_given_classes(tmp_path: Path) -> None:
    path = tmp_path / "LSWMD.pkl"
    lswmd_frame(4).to_pickle(path)
    with pytest.raises(DataError, match="unknown class name 'Scratch'"):
        load_lswmd(path, classes=["Edge-Ring", "none"])
    s = load_lswmd(path, classes=["Edge-Ring", "none"], on_error="skip")
    assert s.labels == ["Edge-Ring", "none", None]


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('x')",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import subprocess

        return (subprocess.Popen, (["touch", str(self.marker)],))


class _Memmap:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (np.memmap, (str(self.marker), np.uint8, "w+", 0, (4,)))


class _ReadPickle:
    """A pandas function is no loophole: only data classes are admitted."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pd.read_pickle, (str(self.marker),))


@pytest.mark.parametrize("payload", [_System, _Eval, _Popen, _Memmap, _ReadPickle])
@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_is_refused_and_nothing_runs(
    tmp_path: Path, payload, protocol: int
) -> None:
    marker = tmp_path / "PWNED"
    df = lswmd_frame(2)
    # the payload hides inside a DataFrame cell, after legitimate pandas/numpy globals
    df["waferMap"] = df["waferMap"].astype(object)
    df.at[1, "waferMap"] = payload(marker)
    path = tmp_path / "LSWMD.pkl"
    with path.open("wb") as fh:
        pickle.dump(df, fh, protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"LSWMD\.pkl: .*refused"):
        load_lswmd(path)
    assert not marker.exists()


def test_hand_written_global_opcode_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    # protocol-0 program: GLOBAL os.system, MARK, STRING, TUPLE, REDUCE, STOP
    program = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.pkl"
    path.write_bytes(program)
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        safe_load_pickle(path)
    assert not marker.exists()


def test_truncated_and_non_frame_pickles(tmp_path: Path) -> None:
    path = tmp_path / "LSWMD.pkl"
    lswmd_frame(3).to_pickle(path)
    raw = path.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.pkl"):
        load_lswmd(cut)
    other = tmp_path / "list.pkl"
    other.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a pandas DataFrame"):
        load_lswmd(other)
    cols = tmp_path / "cols.pkl"
    pd.DataFrame({"a": [1]}).to_pickle(cols)
    with pytest.raises(DataError, match=r"columns .*waferMap"):
        load_lswmd(cols)
    with pytest.raises(DataError, match="not found"):
        load_lswmd(tmp_path / "absent.pkl")


def test_missing_pandas_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "LSWMD.pkl"
    lswmd_frame(2).to_pickle(path)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(InspectkitError, match=r"needs pandas.*inspectkit\[pandas\]"):
        load_lswmd(path)
