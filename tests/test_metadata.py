"""attach_metadata: joining process-line tables (CSV, rows, columns, DataFrame) onto samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inspectkit.errors import DataError
from inspectkit.records import ImageSet, Predictions, SampleMeta
from inspectkit.sources import attach_metadata
from inspectkit.stages.wrangle import Wrangle, split_of


def wafers(n: int = 6) -> ImageSet:
    return ImageSet(
        images=torch.randint(0, 3, (n, 1, 8, 8), dtype=torch.uint8),
        samples=[
            SampleMeta(
                id=f"lot.npz:{i}",
                source=f"/data/maps/w{i}.png",
                label="a" if i % 2 else "b",
                meta={"index": i},
            )
            for i in range(n)
        ],
        classes=["a", "b"],
        kind="wafer",
    )


def write(tmp_path: Path, text: str, name: str = "lots.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_join_types_and_group(tmp_path: Path) -> None:
    csv = write(
        tmp_path,
        "wafer;lot;temp;passed;tool\n"
        "0;L1;351.5;true;T7\n1;L1;350;false;T7\n2;L2;;yes;T8\n"
        "3;L2;349.25;no;T8\n4;L3;352;true;T9\n5;L3;348;false;T9\n99;L9;1;true;X\n",
    )
    data = wafers()
    out = attach_metadata(data, csv, key="wafer", sample_key="meta.index", group="lot")
    s0, s2 = out.samples[0], out.samples[2]
    assert s0.group == "L1" and out.samples[5].group == "L3"
    assert s0.meta == {"index": 0, "lot": "L1", "temp": 351.5, "passed": True, "tool": "T7"}
    assert isinstance(out.samples[1].meta["temp"], float)  # one type per column
    assert s2.meta["temp"] is None and s2.meta["passed"] is True
    # everything else untouched, a new record (the input is a value)
    assert out.ids == data.ids and out.labels == data.labels
    assert torch.equal(out.images, data.images)
    assert all(s.group is None and "lot" not in s.meta for s in data.samples)


def test_group_column_feeds_a_group_aware_split() -> None:
    data = wafers(24)
    table = [{"id": s.id, "lot": f"L{i // 4}"} for i, s in enumerate(data.samples)]
    data = attach_metadata(data, table, group="lot")
    split = Wrangle(split=(0.5, 0.0, 0.5), group_by="group", seed=3).run(data)
    train = {s.group for s in split_of(split, "train").samples}
    test = {s.group for s in split_of(split, "test").samples}
    assert train and test and not train & test


def test_dict_of_columns_numpy_values_and_name_matching() -> None:
    data = wafers(3)
    table = {"file": np.array(["w0.png", "w1.png", "w2.png"]), "dose": np.array([1, 2, 3])}
    out = attach_metadata(data, table, key="file", sample_key="name")
    assert [s.meta["dose"] for s in out.samples] == [1, 2, 3]
    assert type(out.samples[0].meta["dose"]) is int
    out = attach_metadata(
        data, {"stem": ["w0", "w1", "w2"], "x": [0.5, 1.5, 2.5]}, key="stem", sample_key="stem"
    )
    assert out.samples[2].meta["x"] == 2.5


def test_pandas_dataframe_with_nan_and_timestamps() -> None:
    pd = pytest.importorskip("pandas")
    data = wafers(2)
    df = pd.DataFrame(
        {
            "id": data.ids,
            "temp": [1.0, float("nan")],
            "when": pd.to_datetime(["2024-05-01 10:00", "2024-05-02 11:00"]),
        }
    )
    out = attach_metadata(data, df)
    assert out.samples[1].meta["temp"] is None
    assert out.samples[0].meta["when"].startswith("2024-05-01")


def test_missing_keys_are_reported_dropped_or_kept(tmp_path: Path) -> None:
    data = wafers(4)
    table = [{"id": data.ids[0], "lot": "A"}, {"id": data.ids[1], "lot": "B"}]
    with pytest.raises(DataError, match=r"2 of 4 samples have no row.*lot.npz:2"):
        attach_metadata(data, table)
    dropped = attach_metadata(data, table, on_missing="drop")
    assert dropped.ids == data.ids[:2]
    assert any("lot.npz:3: no metadata row" in s for s in dropped.skipped)
    kept = attach_metadata(data, table, on_missing="keep")
    assert len(kept) == 4 and "lot" not in kept.samples[3].meta


def test_works_on_derived_records() -> None:
    data = wafers(2)
    pred = Predictions.build(
        **data.base_fields(), probs=torch.tensor([[0.2, 0.8], [0.6, 0.4]]), predicted=["b", "a"]
    )
    out = attach_metadata(pred, [{"id": i, "lot": "L"} for i in data.ids], group="lot")
    assert isinstance(out, Predictions) and out.predicted == ["b", "a"]


@pytest.mark.parametrize(
    ("table", "kwargs", "message"),
    [
        (
            [{"id": "lot.npz:0", "v": [1, 2]}],
            {"on_missing": "keep"},
            r"column 'v', row 1 is a list",
        ),
        ([{"id": "lot.npz:0", "v": float("inf")}], {"on_missing": "keep"}, r"only finite"),
        ([{"id": "x"}, {"id": "x"}], {}, r"duplicates \('x'\)"),
        ([{"lot": "A"}], {}, r"no key column 'id'"),
        ([{"id": "lot.npz:0"}], {"columns": ["nope"]}, r"no column\(s\) \['nope'\]"),
        (
            [{"id": "lot.npz:0", "lot": None}],
            {"group": "lot", "on_missing": "keep"},
            r"no value in group column",
        ),
        ("not-a-file.csv", {}, r"not-a-file.csv: metadata table not found"),
        (42, {}, r"table must be a CSV path"),
        ([{"id": "nothing"}], {"on_missing": "drop"}, r"no sample of the set has a row"),
        (
            [{"id": "lot.npz:0", "index": 5}],
            {"on_missing": "keep"},
            r"already has metadata index=0",
        ),
    ],
)
def test_bad_tables_raise_clear_errors(table: object, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        attach_metadata(wafers(2), table, **kwargs)


def test_malformed_csv_names_file_and_line(tmp_path: Path) -> None:
    csv = write(tmp_path, "id,lot\nlot.npz:0,A\nlot.npz:1,B,extra\n")
    with pytest.raises(DataError, match=r"lots.csv: line 3 has 3 cells but the header has 2"):
        attach_metadata(wafers(2), csv)
    empty = write(tmp_path, "   \n", "empty.csv")
    with pytest.raises(DataError, match=r"empty.csv: the metadata table is empty"):
        attach_metadata(wafers(2), empty)


def test_overwrite_replaces_existing_fields() -> None:
    out = attach_metadata(wafers(1), [{"id": "lot.npz:0", "index": 7}], overwrite=True)
    assert out.samples[0].meta["index"] == 7
