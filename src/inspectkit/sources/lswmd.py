"""The original WM-811K ``LSWMD.pkl``: a pandas pickle read with a restricted unpickler.

A pickle is a program: loading one with :func:`pickle.load` runs whatever callables it
names. :class:`SafeUnpickler` therefore resolves a global only when it is one of the
pandas/NumPy pieces a ``DataFrame`` of arrays needs (array and dtype classes, index and
block-manager classes, a handful of reconstruction helpers and harmless builtins). Any
other global — ``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``numpy.load``,
``pandas.read_pickle`` — raises :class:`~inspectkit.errors.UnsafePickleError` at the
moment the unpickler meets it, before the call it was meant for, so nothing in the file
runs. pandas is an optional extra (``pip install "inspectkit[pandas]"``).

Columns used: ``waferMap`` (2-D array of codes 0/1/2), ``failureType`` (nested array such
as ``[['Edge-Ring']]``, empty when unlabelled), and, when present, ``lotName``,
``waferIndex``, ``dieSize`` and ``trianTestLabel`` (sic).
"""

from __future__ import annotations

import _compat_pickle
import importlib
import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from inspectkit.errors import DataError, InspectkitError, UnsafePickleError
from inspectkit.records import ImageSet, SampleMeta
from inspectkit.sources._common import (
    WM811K_CLASSES,
    Collector,
    OnError,
    Unlabelled,
    wafer_label,
)
from inspectkit.sources.layout import Layout, register_layout

log = logging.getLogger(__name__)

#: Harmless non-pandas/NumPy globals a DataFrame pickle may reference.
_SAFE_BUILTINS = {
    ("builtins", "slice"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "object"),
    ("builtins", "range"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}

#: Reconstruction functions of NumPy and pandas, by (module, name) after compat renaming.
_SAFE_FUNCTIONS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.blocks", "new_block"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
    ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
    ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
    ("pandas.core.internals.managers", "create_block_manager_from_blocks"),
}

#: Module renames for pickles written by old pandas/NumPy (LSWMD.pkl predates pandas 1.0).
_MODULE_RENAMES = {
    "pandas.indexes.base": "pandas.core.indexes.base",
    "pandas.indexes.range": "pandas.core.indexes.range",
    "pandas.indexes.numeric": "pandas.core.indexes.base",
    "pandas.indexes.multi": "pandas.core.indexes.multi",
    "pandas.core.indexes.numeric": "pandas.core.indexes.base",
    "pandas.core.internals": "pandas.core.internals.managers",
}
_NAME_RENAMES = {
    ("pandas.core.indexes.base", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "UInt64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "Float64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.internals.managers", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.base", "FrozenNDArray"): ("numpy", "ndarray"),
}


def _require_pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise InspectkitError(
            "reading LSWMD.pkl needs pandas, an optional extra: pip install 'inspectkit[pandas]' "
            "(or convert the pickle to the .npz layout once and use load_wafer_npz)"
        ) from None
    return pd


def _safe_bases() -> tuple[type, ...]:
    pd = _require_pandas()
    from pandas._libs.arrays import NDArrayBacked
    from pandas.api.extensions import ExtensionArray, ExtensionDtype
    from pandas.core.internals.blocks import Block
    from pandas.core.internals.managers import BaseBlockManager

    return (
        np.ndarray,
        np.dtype,
        np.generic,
        pd.Index,
        pd.DataFrame,
        pd.Series,
        BaseBlockManager,
        Block,
        ExtensionArray,
        ExtensionDtype,
        NDArrayBacked,
    )


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals a pandas ``DataFrame`` pickle needs.

    Example:
        >>> import io, pickle
        >>> from inspectkit.sources.lswmd import SafeUnpickler
        >>> SafeUnpickler(io.BytesIO(pickle.dumps([1, 2]))).load()
        [1, 2]
    """

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._bases = _safe_bases()

    def find_class(self, module: str, name: str) -> Any:
        module, name = _rename(module, name)
        if (module, name) in _SAFE_BUILTINS:
            return super().find_class(module, name)
        root = module.split(".", 1)[0]
        if root not in ("numpy", "pandas"):
            raise _refuse(module, name)
        if (module, name) in _SAFE_FUNCTIONS:
            return super().find_class(module, name)
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise UnsafePickleError(
                f"the pickle references {module}.{name}, which does not exist in this "
                "pandas/NumPy; it was refused and nothing in the file ran"
            ) from None
        if (
            isinstance(obj, type)
            and issubclass(obj, self._bases)
            and not issubclass(obj, np.memmap)  # np.memmap(...) creates files
        ):
            return obj
        raise _refuse(module, name)


def _rename(module: str, name: str) -> tuple[str, str]:
    # Python 2 names (__builtin__, copy_reg) as the C unpickler would map them
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    module = _MODULE_RENAMES.get(module, module)
    return _NAME_RENAMES.get((module, name), (module, name))


def _refuse(module: str, name: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"the pickle references {module}.{name}, which is not a pandas/NumPy data class; "
        "refused before anything in the file ran (LSWMD.pkl needs only pandas and NumPy)"
    )


def safe_load_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (Python 2 pickles are retried as latin-1).

    Raises:
        UnsafePickleError: the file references a global outside the allowed list.
        DataError: the file is missing, truncated or not a pickle.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    for encoding in ("ASCII", "latin1"):
        try:
            with p.open("rb") as fh:
                return SafeUnpickler(fh, encoding=encoding).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{p}: {exc}") from None
        except UnicodeDecodeError:
            continue  # written by Python 2: byte strings need latin-1
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
                IndexError, KeyError, MemoryError) as exc:  # fmt: skip
            raise DataError(
                f"{p}: not a readable pandas pickle, or truncated ({type(exc).__name__}: {exc})"
            ) from None
    raise DataError(f"{p}: text in the pickle is neither ASCII nor latin-1")


def _first_str(value: Any) -> str | None:
    """``[['Edge-Ring']]`` → ``'Edge-Ring'``; empty array / None / NaN → ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, float) and math.isnan(value):
        return None
    arr = np.asarray(value, dtype=object).ravel()
    if arr.size == 0:
        return None
    first = arr[0]
    if isinstance(first, bytes):
        first = first.decode("latin-1")
    text = str(first).strip()
    return text or None


def _plain(value: Any) -> str | int | float | None:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value
    if isinstance(value, int | str):
        return value
    return str(value)


def _wafer(value: Any, where: str) -> torch.Tensor:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # a cell holding something array-like that numpy rejects
        raise DataError(f"{where}: waferMap is not an array ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{where}: waferMap must be a non-empty 2-D array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(
                f"{where}: waferMap holds {int((~np.isfinite(arr)).sum())} NaN/inf values"
            )
        if not (arr == np.round(arr)).all():
            raise DataError(f"{where}: waferMap holds non-integer values; codes must be 0/1/2")
    elif arr.dtype.kind not in "iub":
        raise DataError(f"{where}: waferMap has dtype {arr.dtype}; expected integer codes 0/1/2")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 2:
        raise DataError(
            f"{where}: waferMap holds code {int(hi) if hi > 2 else int(lo)}; codes must be "
            "0 (outside), 1 (pass), 2 (fail)"
        )
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))[None]


def load_lswmd(
    path: str | os.PathLike[str],
    *,
    unlabelled: Unlabelled = "keep",
    on_error: OnError = "raise",
    limit: int | None = None,
    classes: list[str] | None = None,
) -> ImageSet:
    """Load wafer maps from the original WM-811K ``LSWMD.pkl`` safely.

    Args:
        path: The pickle (a pandas ``DataFrame``).
        unlabelled: ``"keep"`` maps with an empty ``failureType`` (label ``None``) or
            ``"skip"`` them (811,457 maps in the full file, about 79% unlabelled).
        on_error: ``"raise"`` stops at a bad map (codes outside {0, 1, 2}, NaN, not 2-D);
            ``"skip"`` leaves it out and lists it in ``ImageSet.skipped``.
        limit: Read only the first ``limit`` rows.
        classes: Class list (default: the nine WM-811K types plus any other label found);
            a label outside a given list is an error.

    Returns:
        An ``ImageSet`` of kind ``"wafer"``: ragged ``1×H×W`` uint8 maps; ``group`` is the
        lot name; ``meta`` holds ``wafer_index``, ``die_size``, ``lswmd_split``
        (``"Training"``/``"Test"`` when given), ``row``, ``height``, ``width``.

    Raises:
        UnsafePickleError: the pickle references anything but pandas/NumPy data classes.
        InspectkitError: pandas is not installed.
        DataError: unreadable file, missing columns, bad maps (with ``on_error="raise"``).

    Example:
        >>> from inspectkit.sources import load_lswmd
        >>> labelled = load_lswmd("LSWMD.pkl", unlabelled="skip")  # doctest: +SKIP
    """
    if unlabelled not in ("keep", "skip"):
        raise DataError(f"unlabelled must be 'keep' or 'skip', got {unlabelled!r}")
    collector = Collector(on_error)
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    pd = _require_pandas()
    p = Path(path)
    df = safe_load_pickle(p)
    if not isinstance(df, pd.DataFrame):
        raise DataError(
            f"{p}: holds a {type(df).__name__}, expected a pandas DataFrame (LSWMD layout)"
        )
    missing = [c for c in ("waferMap", "failureType") if c not in df.columns]
    if missing:
        raise DataError(
            f"{p}: columns {missing} missing; LSWMD.pkl has waferMap, dieSize, lotName, "
            f"waferIndex, trianTestLabel, failureType (found {list(df.columns)})"
        )
    if limit is not None:
        df = df.iloc[:limit]
    n = len(df)

    def column(name: str) -> list[Any]:
        return df[name].tolist() if name in df.columns else [None] * n

    maps, types = column("waferMap"), column("failureType")
    lots, indices, dies, splits = (
        column(c) for c in ("lotName", "waferIndex", "dieSize", "trianTestLabel")
    )
    class_list = list(classes) if classes is not None else list(WM811K_CLASSES)
    images: list[torch.Tensor] = []
    samples: list[SampleMeta] = []
    stem = p.stem
    template = SampleMeta(id=stem or "map", source=str(p))  # copied per row, see wafer.py
    for i in range(n):
        where = f"{p.name}[row {i}]"
        label = _first_str(types[i])
        if label is not None:
            label = wafer_label(label)
        if label is None and unlabelled == "skip":
            continue
        if label is not None and label not in class_list:
            if classes is not None:
                collector.skip(where, f"unknown class name {label!r}; expected one of {class_list}")
                continue
            class_list.append(label)
        wafer = collector.attempt(lambda i=i, where=where: _wafer(maps[i], where))
        if wafer is None:
            continue
        lot = _plain(lots[i])
        meta: dict[str, Any] = {
            "row": i,
            "height": int(wafer.shape[1]),
            "width": int(wafer.shape[2]),
            "wafer_index": _plain(indices[i]),
            "die_size": _plain(dies[i]),
            "lswmd_split": _first_str(splits[i]),
        }
        samples.append(
            template.model_copy(
                update={
                    "id": f"{stem}:{i}",
                    "label": label,
                    "group": None if lot is None else str(lot),
                    "meta": meta,
                }
            )
        )
        images.append(wafer)
    if not samples:
        raise DataError(f"{p}: no wafer maps left to load ({len(collector.skipped)} skipped)")
    log.info("loaded %d wafer maps from %s (%d skipped)", len(samples), p, len(collector.skipped))
    return ImageSet.build(
        images=images, samples=samples, classes=class_list, kind="wafer", skipped=collector.skipped
    )


def _load_layout(
    path: Path, *, purpose: str, task: str, channels: int | None, limit: int | None
) -> ImageSet:
    unlabelled: Unlabelled = "keep" if purpose == "predict" else "skip"
    return load_lswmd(path, unlabelled=unlabelled, limit=limit)


LSWMD = register_layout(
    Layout(
        name="lswmd",
        detect=lambda p: p.is_file() and p.suffix.lower() in (".pkl", ".pickle"),
        load=_load_layout,
        priority=90,
        description="the original WM-811K LSWMD.pkl (pandas, read by a restricted unpickler)",
    )
)

__all__ = ["LSWMD", "SafeUnpickler", "load_lswmd", "safe_load_pickle"]
