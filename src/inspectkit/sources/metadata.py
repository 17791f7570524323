"""Data fusion: join process-line metadata (lot, wafer, tool, recipe, ...) onto samples.

Inspection images rarely come alone: a lot number, the wafer's index in its lot, the tool
and recipe, process parameters sit in a CSV file or a table. :func:`attach_metadata`
joins such a table onto an :class:`~inspectkit.records.ImageSet` by a key column, checks
that every value is a plain type (``str``, ``int``, ``float``, ``bool`` or empty), reports
samples without a row and table rows without a sample, and can put one column (the lot)
into ``SampleMeta.group`` so that ``Wrangle``'s group-aware split keeps each lot on one
side of the train/test line.

Example:
    >>> import torch
    >>> from inspectkit.records import ImageSet, SampleMeta
    >>> from inspectkit.sources import attach_metadata
    >>> s = ImageSet(images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
    ...              samples=[SampleMeta(id="w1"), SampleMeta(id="w2")])
    >>> table = [{"id": "w1", "lot": "L7", "temp": 351.5}, {"id": "w2", "lot": "L8", "temp": 349.0}]
    >>> out = attach_metadata(s, table, group="lot")
    >>> out.samples[0].group, out.samples[0].meta["temp"]
    ('L7', 351.5)
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from inspectkit.errors import DataError
from inspectkit.records import ImageSet, MetaValue, SampleMeta

log = logging.getLogger(__name__)

OnMissing = Literal["raise", "drop", "keep"]
SampleKey = str | Callable[[SampleMeta], Any]

_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}
_SHOW = 5  # how many offending keys an error message lists


# ---------------------------------------------------------------------- reading tables
def _read_csv(path: Path, delimiter: str | None) -> tuple[list[str], dict[str, list[Any]], str]:
    """Columns of a CSV file as lists of raw strings (``None`` for empty cells)."""
    if not path.is_file():
        raise DataError(f"{path}: metadata table not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the metadata table ({exc})") from None
    if not text.strip():
        raise DataError(f"{path}: the metadata table is empty")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header) or any(not h for h in header):
        raise DataError(f"{path}: header {header} has empty or duplicate column names")
    columns: dict[str, list[Any]] = {h: [] for h in header}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {line_no} has {len(row)} cells but the header has {len(header)}"
            )
        for h, cell in zip(header, row):
            cell = cell.strip()
            columns[h].append(cell if cell else None)
    return header, columns, str(path)


def _is_dataframe(table: Any) -> bool:
    return hasattr(table, "to_dict") and hasattr(table, "columns") and hasattr(table, "dtypes")


def _table_columns(
    table: Any, delimiter: str | None
) -> tuple[list[str], dict[str, list[Any]], str, bool]:
    """(column names, columns, description, values-are-csv-strings)."""
    if isinstance(table, str | os.PathLike):
        header, cols, where = _read_csv(Path(table), delimiter)
        return header, cols, where, True
    if _is_dataframe(table):
        cols = {str(k): list(v) for k, v in table.to_dict(orient="list").items()}
        return list(cols), cols, "the DataFrame", False
    if isinstance(table, Mapping):
        cols = {}
        for k, v in table.items():
            if isinstance(v, str | bytes) or not isinstance(v, (Sequence, *_array_like())):
                raise DataError(
                    f"a dict table maps each column name to a list of values; column {k!r} "
                    f"holds a {type(v).__name__}"
                )
            cols[str(k)] = list(v)
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"the table's columns differ in length: {lengths}")
        return list(cols), cols, "the table", False
    if isinstance(table, Sequence) and not isinstance(table, str | bytes):
        header: list[str] = []
        for i, row in enumerate(table):
            if not isinstance(row, Mapping):
                raise DataError(
                    f"row {i} of the table is a {type(row).__name__}; a list table holds dicts"
                )
            header += [str(k) for k in row if str(k) not in header]
        cols = {h: [row.get(h) for row in table] for h in header}
        return header, cols, "the table", False
    raise DataError(
        "table must be a CSV path, a list of dicts, a dict of columns or a pandas DataFrame; "
        f"got {type(table).__name__}"
    )


def _array_like() -> tuple[type, ...]:
    try:
        import numpy as np

        return (np.ndarray,)
    except ImportError:  # pragma: no cover - numpy is a dependency
        return ()


# ---------------------------------------------------------------------- value checks
def _parse_csv_column(values: list[str | None]) -> list[MetaValue]:
    """Give a CSV column one type: int, float, bool or str (empty cells stay ``None``)."""
    present = [v for v in values if v is not None]
    if not present:
        return list(values)
    for convert in (int, float):
        try:
            converted = [None if v is None else convert(v) for v in values]
        except ValueError:
            continue
        return converted
    lowered = {v.lower() for v in present}
    if lowered <= _TRUE | _FALSE:
        return [None if v is None else v.lower() in _TRUE for v in values]
    return list(values)


def _plain(value: Any, where: str) -> MetaValue:
    """A plain JSON scalar, or a ``DataError`` naming ``where``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None  # pandas' and numpy's missing value
        if not math.isfinite(value):
            raise DataError(f"{where} is {value}; only finite numbers are allowed")
        return float(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return _plain(item(), where)
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    if hasattr(value, "isoformat"):  # dates and timestamps: keep them readable
        return str(value.isoformat())
    raise DataError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); metadata values must be "
        "str, int, float, bool or empty"
    )


def _key_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        value = item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _sample_key_fn(sample_key: SampleKey) -> Callable[[SampleMeta], Any]:
    if callable(sample_key):
        return sample_key
    if sample_key == "id":
        return lambda s: s.id
    if sample_key == "name":
        return lambda s: Path(s.source or s.id).name
    if sample_key == "stem":
        return lambda s: Path(s.source or s.id).stem
    if sample_key.startswith("meta."):
        field = sample_key[5:]
        return lambda s: s.meta.get(field)
    raise DataError(
        f"sample_key must be 'id', 'name', 'stem', 'meta.<field>' or a function; got {sample_key!r}"
    )


def _preview(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


# ---------------------------------------------------------------------- the join
def attach_metadata(
    image_set: ImageSet,
    table: Any,
    key: str = "id",
    *,
    sample_key: SampleKey = "id",
    columns: Sequence[str] | None = None,
    group: str | None = None,
    on_missing: OnMissing = "raise",
    overwrite: bool = False,
    delimiter: str | None = None,
) -> ImageSet:
    """Join a metadata table onto the samples of ``image_set``.

    Args:
        image_set: The images; its samples keep everything they had and gain columns.
        table: A CSV file path (header row; delimiter sniffed among ``,;|`` and tab,
            cells typed per column as int, float, bool ``true/false/yes/no`` or str, empty
            cells as ``None``), a list of dicts (one per row), a dict of columns
            (name → list of values) or a pandas ``DataFrame``.
        key: The table column that identifies a sample.
        sample_key: What of each sample matches ``key``: ``"id"`` (``SampleMeta.id``),
            ``"name"`` (file name of ``SampleMeta.source``), ``"stem"`` (file name
            without suffix), ``"meta.<field>"`` (e.g. ``"meta.index"`` for wafer maps) or a
            function of the :class:`SampleMeta`.
        columns: Columns to attach (default: every column except ``key``).
        group: A column whose value becomes ``SampleMeta.group`` (e.g. the lot) for
            group-aware splits; a sample whose row has no value there is an error.
        on_missing: What to do with samples that have no row: ``"raise"`` (a
            :class:`DataError` listing them), ``"drop"`` (leave them out and list each as
            ``"<id>: no metadata row"`` in ``ImageSet.skipped``) or ``"keep"`` (unchanged,
            with a warning).
        overwrite: Replace metadata fields the samples already have; by default a column
            whose name is already in ``SampleMeta.meta`` with another value is an error.
        delimiter: CSV delimiter; sniffed when ``None``.

    Returns:
        A new ``ImageSet`` (same record type) whose samples carry the joined columns in
        ``meta`` (and ``group``). Table rows without a sample are logged, not errors.

    Raises:
        DataError: unreadable or malformed table (naming the file and line), a key
            column missing or holding duplicates, a value that is not a plain type,
            samples without a row when ``on_missing="raise"``.

    Example:
        >>> out = attach_metadata(wafers, "lots.csv", key="wafer", sample_key="meta.index",
        ...                       group="lot")  # doctest: +SKIP
    """
    if not isinstance(image_set, ImageSet):
        raise DataError(f"attach_metadata needs an ImageSet, got {type(image_set).__name__}")
    if on_missing not in ("raise", "drop", "keep"):
        raise DataError(f"on_missing must be 'raise', 'drop' or 'keep', got {on_missing!r}")
    header, cols, where, from_csv = _table_columns(table, delimiter)
    if key not in cols:
        raise DataError(f"{where} has no key column {key!r}; its columns are {header}")
    wanted = [c for c in header if c != key] if columns is None else list(columns)
    unknown = [c for c in wanted if c not in cols]
    if group is not None and group not in cols:
        unknown.append(group)
    if unknown:
        raise DataError(f"{where} has no column(s) {unknown}; its columns are {header}")

    # typed, validated columns
    typed: dict[str, list[MetaValue]] = {}
    for c in dict.fromkeys([*wanted, *([group] if group else [])]):
        raw = cols[c]
        values = _parse_csv_column(raw) if from_csv else raw
        typed[c] = [_plain(v, f"{where}: column {c!r}, row {i + 1}") for i, v in enumerate(values)]

    # key → row position
    rows: dict[str, int] = {}
    duplicates: list[str] = []
    for i, raw_key in enumerate(cols[key]):
        k = _key_text(raw_key)
        if k is None or k == "":
            raise DataError(f"{where}: row {i + 1} has an empty key in column {key!r}")
        if k in rows:
            duplicates.append(k)
        rows[k] = i
    if duplicates:
        raise DataError(
            f"{where}: key column {key!r} holds duplicates ({_preview(duplicates)}); "
            "each sample needs exactly one row"
        )

    key_of = _sample_key_fn(sample_key)
    matched: list[int | None] = []
    for s in image_set.samples:
        k = _key_text(key_of(s))
        matched.append(rows.get(k) if k is not None else None)
    missing = [s.id for s, r in zip(image_set.samples, matched) if r is None]
    used = {r for r in matched if r is not None}
    if len(used) < len(rows):
        log.info("%s: %d rows match no sample", where, len(rows) - len(used))
    if missing:
        what = (
            f"{len(missing)} of {len(image_set)} samples have no row in {where} "
            f"(key column {key!r}, matched on sample {sample_key if isinstance(sample_key, str) else 'key function'}): "
            f"{_preview(missing)}"
        )
        if on_missing == "raise":
            raise DataError(what + "; pass on_missing='drop' or 'keep' to go on without them")
        log.warning(what)

    samples: list[SampleMeta] = []
    keep: list[int] = []
    skipped = list(image_set.skipped)
    for i, (s, r) in enumerate(zip(image_set.samples, matched)):
        if r is None:
            if on_missing == "drop":
                skipped.append(f"{s.id}: no metadata row in {where}")
                continue
            samples.append(s)
            keep.append(i)
            continue
        meta = dict(s.meta)
        for c in wanted:
            value = typed[c][r]
            if not overwrite and c in meta and meta[c] != value:
                raise DataError(
                    f"sample {s.id!r} already has metadata {c}={meta[c]!r} but {where} says "
                    f"{value!r}; pass overwrite=True or columns=[...] without {c!r}"
                )
            meta[c] = value
        changes: dict[str, Any] = {"meta": meta}
        if group is not None:
            g = typed[group][r]
            if g is None or g == "":
                raise DataError(
                    f"{where}: the row of sample {s.id!r} has no value in group column {group!r}"
                )
            changes["group"] = str(g)
        try:
            samples.append(SampleMeta(**{**s.model_dump(), **changes}))
        except ValueError as exc:
            raise DataError(f"sample {s.id!r}: {exc}") from None
        keep.append(i)
    if not samples:
        raise DataError(f"no sample of the set has a row in {where}; check key and sample_key")
    out = image_set.subset(keep) if len(keep) < len(image_set) else image_set
    return out.replace(samples=samples, skipped=skipped)


__all__ = ["attach_metadata"]
