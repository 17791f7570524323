"""The original WM-811K ``LSWMD.pkl``: a pandas pickle read with a restricted unpickler.

A pickle is a program: loading one with :func:`pickle.load` runs whatever callables it
names. :class:`SafeUnpickler` therefore resolves a global only when its (module, name)
is in an exact allow-list of the pandas/NumPy pieces a ``DataFrame`` of arrays needs
(as torch's ``weights_only`` unpickler does), without importing anything the file
names. Any other global — ``os.system``, ``builtins.eval``, ``numpy.f2py.__main__.main``,
``numpy.load``, ``pandas.read_pickle`` — raises
:class:`~inspectkit.errors.UnsafePickleError` the moment the unpickler meets it, so
nothing in the file runs. What it may create from a size rather than from its own bytes
(``range(3 * 10**7)``, ``bytes(n)``, an array shape, an index length) is bounded by
``max_pickle_items`` (:mod:`inspectkit.sources.limits`). pandas is an optional extra
(``pip install "inspectkit[pandas]"``).

Columns used: ``waferMap`` (2-D array of codes 0/1/2), ``failureType`` (nested array such
as ``[['Edge-Ring']]``, empty when unlabelled), and, when present, ``lotName``,
``waferIndex``, ``dieSize`` and ``trianTestLabel`` (sic).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import copyreg
import functools
import importlib
import logging
import math
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from inspectkit.errors import DataError, InspectkitError, UnsafePickleError
from inspectkit.records import ImageSet, SampleMeta, printable
from inspectkit.sources._common import (
    WM811K_CLASSES,
    Collector,
    OnError,
    Unlabelled,
    check_regular_file,
    wafer_label,
)
from inspectkit.sources.layout import Layout, register_layout
from inspectkit.sources.limits import (
    Limits,
    SizeLimitError,
    applies_limits,
    env_var,
    get_limits,
    over,
)

log = logging.getLogger(__name__)

#: Module renames for pickles written by old pandas/NumPy (LSWMD.pkl predates pandas 1.0).
_MODULE_RENAMES = {
    "pandas.core.index": "pandas.core.indexes.base",
    "pandas.indexes.base": "pandas.core.indexes.base",
    "pandas.indexes.range": "pandas.core.indexes.range",
    "pandas.indexes.numeric": "pandas.core.indexes.base",
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

#: Every global a pickle may name, as (module, name) after the renames above, and what it
#: stands for: an entry of :func:`_objects`. Nothing else is resolved, and nothing is
#: imported to resolve it (the objects come from NumPy and pandas, imported by us).
_ALLOWED = {
    ("builtins", "object"): "object",
    ("builtins", "slice"): "slice",
    ("builtins", "bool"): "bool",
    ("builtins", "int"): "int",
    ("builtins", "float"): "float",
    ("builtins", "complex"): "complex",
    ("builtins", "str"): "str",
    ("builtins", "bytes"): "bytes",
    ("builtins", "bytearray"): "bytearray",
    ("builtins", "range"): "range",
    ("builtins", "list"): "list",
    ("builtins", "tuple"): "tuple",
    ("builtins", "set"): "set",
    ("builtins", "frozenset"): "frozenset",
    ("builtins", "dict"): "dict",
    ("collections", "OrderedDict"): "OrderedDict",
    ("copyreg", "_reconstructor"): "_reconstructor",
    ("_codecs", "encode"): "encode",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
    ("pandas", "DataFrame"): "DataFrame",
    ("pandas.core.frame", "DataFrame"): "DataFrame",
    ("pandas", "Index"): "Index",
    ("pandas.core.indexes.base", "Index"): "Index",
    ("pandas", "RangeIndex"): "RangeIndex",
    ("pandas.core.indexes.range", "RangeIndex"): "RangeIndex",
    ("pandas.core.indexes.base", "_new_Index"): "_new_Index",
    ("pandas.core.internals.managers", "BlockManager"): "BlockManager",
    ("pandas._libs.internals", "_unpickle_block"): "_unpickle_block",
    ("pandas.core.internals.managers", "create_block_manager_from_blocks"): "manager_from_blocks",
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): "unpickle_backed",
    ("pandas", "StringDtype"): "StringDtype",
    ("pandas.core.arrays.string_", "StringDtype"): "StringDtype",
    ("pandas.arrays", "StringArray"): "StringArray",
    ("pandas", "NA"): "NA",
    ("pandas._libs.missing", "NA"): "NA",
    ("pandas.arrays", "ArrowStringArray"): "ArrowStringArray",
    ("pandas.core.arrays.string_arrow", "ArrowStringArray"): "ArrowStringArray",
    ("pyarrow.lib", "type_for_alias"): "type_for_alias",
    ("pyarrow.lib", "py_buffer"): "py_buffer",
    ("pyarrow.lib", "_restore_array"): "_restore_array",
    ("pandas.core.arrays.string_", "StringArray"): "StringArray",
    ("pandas._libs.tslibs.nattype", "_nat_unpickle"): "_nat_unpickle",
    ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"): "_unpickle_timestamp",
    ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"): "_timedelta_unpickle",
}
#: Arrow types a pickled pandas string column (pandas 3 with pyarrow) may name.
_ARROW_STRING_TYPES = frozenset(
    {"string", "str", "utf8", "large_string", "large_str", "large_utf8"}
)

#: Text encodings ``_codecs.encode`` may name (Python 2 byte strings come as latin-1).
_ENCODINGS = frozenset({"latin1", "latin-1", "ascii", "utf-8", "utf8"})


def _require_pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise InspectkitError(
            "reading LSWMD.pkl needs pandas, an optional extra: pip install 'inspectkit[pandas]' "
            "(or convert the pickle to the .npz layout once and use load_wafer_npz)"
        ) from None
    return pd


def _numpy_module(name: str) -> Any:
    """``numpy._core.<name>`` (NumPy 2), else ``numpy.core.<name>`` (NumPy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # pragma: no cover - NumPy 1
        return importlib.import_module(f"numpy.core.{name}")


@functools.cache
def _objects() -> dict[str, Any]:
    """The objects :data:`_ALLOWED` stands for, from modules we import ourselves."""
    pd = _require_pandas()
    from pandas._libs import arrays as libarrays
    from pandas._libs import internals as libinternals
    from pandas._libs.tslibs import nattype, timedeltas, timestamps
    from pandas.core.indexes import base as ibase
    from pandas.core.internals import managers

    class DataFrameFromPickle(pd.DataFrame):
        """What a pickle gets for ``DataFrame``: made by NEWOBJ or ``_reconstructor`` as a
        DataFrame pickle does, never called (``DataFrame(0, index=..., columns=...)``
        would allocate rows × columns from two short lists); turned back into a plain
        DataFrame after loading."""

        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise UnsafePickleError(
                "the pickle calls DataFrame(...) itself, which a saved DataFrame never does; "
                "refused before it ran"
            )

    multiarray = _numpy_module("multiarray")
    return {
        "object": object,
        "slice": slice,
        "bool": bool,
        "int": int,
        "float": float,
        "complex": complex,
        "str": str,
        "bytes": bytes,
        "bytearray": bytearray,
        "range": range,
        "list": list,
        "tuple": tuple,
        "set": set,
        "frozenset": frozenset,
        "dict": dict,
        "OrderedDict": collections.OrderedDict,
        "_reconstructor": copyreg._reconstructor,
        "encode": codecs.encode,
        "ndarray": np.ndarray,
        "dtype": np.dtype,
        "_reconstruct": multiarray._reconstruct,
        "scalar": multiarray.scalar,
        "_frombuffer": _numpy_module("numeric")._frombuffer,
        "DataFrame": DataFrameFromPickle,
        "Index": pd.Index,
        "RangeIndex": pd.RangeIndex,
        "_new_Index": ibase._new_Index,
        "BlockManager": managers.BlockManager,
        "_unpickle_block": libinternals._unpickle_block,
        "manager_from_blocks": managers.create_block_manager_from_blocks,
        "unpickle_backed": libarrays.__pyx_unpickle_NDArrayBacked,
        "StringDtype": pd.StringDtype,
        "StringArray": pd.arrays.StringArray,
        "NA": pd.NA,
        "_nat_unpickle": nattype._nat_unpickle,
        "_unpickle_timestamp": timestamps._unpickle_timestamp,
        "_timedelta_unpickle": timedeltas._timedelta_unpickle,
    }


class _Budget:
    """Elements (array bytes) a pickle may create from a size rather than from data it
    holds, counted over one load (``Limits.max_pickle_items``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, n: int, what: str) -> None:
        self.used += max(0, int(n))
        if self.used > self.limit:
            raise SizeLimitError(
                f"the pickle asks to create {what} from a size: {self.used:,} elements in "
                f"all, over max_pickle_items={self.limit:,}; raise it per call (limits=), "
                f"for the process (inspectkit.sources.set_limits) or with "
                f"{env_var('max_pickle_items')}"
            )


class _Class:
    """A class a pickle may pass to a reconstruction function but not call: the functions
    below unwrap it; calling it (``numpy.ndarray((10**9,))``) is charged to the budget."""

    def __init__(self, cls: type, budget: _Budget, size: Callable[..., int]) -> None:
        self.cls, self.budget, self.size = cls, budget, size

    def __call__(self, *args: Any) -> Any:
        self.budget.charge(self.size(*args), f"{self.cls.__name__}{_short(args)}")
        return self.cls(*args)


def _short(args: tuple[Any, ...]) -> str:
    text = repr(args) if len(args) != 1 else f"({args[0]!r})"
    return text if len(text) <= 80 else text[:77] + "...)"


def _raw(obj: Any) -> Any:
    return obj.cls if isinstance(obj, _Class) else obj


def _elements(shape: Any) -> int:
    """Elements of an array ``shape`` (an int or a sequence of ints), exactly."""
    dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    if not all(isinstance(d, int | np.integer) and d >= 0 for d in dims):
        raise UnsafePickleError(f"the pickle gives an array the shape {shape!r}; refused")
    return math.prod(int(d) for d in dims)


def _len(value: Any) -> int:
    """Elements a container built from ``value`` gets (0 for a non-container)."""
    if isinstance(value, range):
        return _range_len(value)
    try:
        return len(value) if hasattr(value, "__len__") else 0
    except Exception:  # a half-built pandas object
        raise UnsafePickleError(
            f"the pickle builds a container from {type(value).__name__}"
        ) from None


def _range_len(r: range) -> int:
    if (r.step > 0 and r.stop <= r.start) or (r.step < 0 and r.stop >= r.start):
        return 0
    return (abs(r.stop - r.start) + abs(r.step) - 1) // abs(r.step)


def _arrow_objects(budget: _Budget) -> dict[str, Any]:
    """What a pandas 3 string column backed by Arrow pickles as, rebuilt under checks.

    Such a column is an ``ArrowStringArray`` whose state holds
    ``pyarrow.lib._restore_array((type, length, null_count, offset, buffers, children,
    dictionary))``. Only a string type named through ``type_for_alias`` is accepted, with
    no children or dictionary; the array is assembled from the buffers the file holds and
    validated in full (offsets in bounds, valid UTF-8) before anything reads it.
    """
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError(
            "the pickle holds a text column stored by pandas with pyarrow; reading it needs "
            "pyarrow (pip install pyarrow)"
        ) from None
    from pandas.arrays import ArrowStringArray

    allowed_types = {pa.string(), pa.large_string()}

    def type_for_alias(alias: Any) -> Any:
        if not isinstance(alias, str) or alias not in _ARROW_STRING_TYPES:
            raise UnsafePickleError(f"the pickle names the Arrow type {alias!r}; refused")
        return pa.lib.type_for_alias(alias)

    def py_buffer(data: Any) -> Any:
        if not isinstance(data, bytes | bytearray):
            raise UnsafePickleError(
                f"the pickle makes an Arrow buffer from a {type(data).__name__}; refused"
            )
        return pa.py_buffer(bytes(data))

    def restore_array(data: Any) -> Any:
        if not isinstance(data, tuple) or len(data) != 7:
            raise UnsafePickleError("the pickle rebuilds an Arrow array from malformed data")
        type_, length, null_count, offset, buffers, children, dictionary = data
        ints = (length, null_count, offset)
        if (
            type_ not in allowed_types
            or not all(isinstance(v, int) and v >= -1 for v in ints)
            or length < 0
            or offset < 0
            or children
            or dictionary is not None
            or not isinstance(buffers, list)
            or len(buffers) != 3
            or not all(b is None or isinstance(b, pa.Buffer) for b in buffers)
        ):
            raise UnsafePickleError(
                "the pickle rebuilds an Arrow array other than a plain string column; refused"
            )
        budget.charge(length, f"an Arrow string array of {length:,} entries")
        try:
            array = pa.Array.from_buffers(type_, length, buffers, null_count, offset)
            array.validate(full=True)
        except (pa.ArrowException, ValueError) as exc:
            raise DataError(f"an Arrow string column in the pickle is corrupt: {exc}") from None
        return array

    class ArrowStringArrayFromPickle(ArrowStringArray):
        """What a pickle gets for ``ArrowStringArray``: made by NEWOBJ, filled by its
        state only from an array :func:`restore_array` checked, then a plain
        ``ArrowStringArray``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise UnsafePickleError(
                "the pickle calls ArrowStringArray(...) itself, which a saved array never "
                "does; refused before it ran"
            )

        def __setstate__(self, state: Any) -> None:
            if (
                not isinstance(state, dict)
                or set(state) - {"_pa_array", "_data", "_dtype", "_cache"}
                or not isinstance(state.get("_pa_array", state.get("_data")), pa.Array)
                or not isinstance(state.get("_dtype"), _objects()["StringDtype"])
                or state.get("_cache", {}) != {}
            ):
                raise UnsafePickleError(
                    "the pickle gives an ArrowStringArray a state other than a checked "
                    "string array; refused"
                )
            super().__setstate__(dict(state))
            self.__class__ = ArrowStringArray

    return {
        "type_for_alias": type_for_alias,
        "py_buffer": py_buffer,
        "_restore_array": restore_array,
        "ArrowStringArray": ArrowStringArrayFromPickle,
    }


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals a pandas ``DataFrame`` pickle needs.

    A global resolves only when its (module, name) is in an exact allow-list; nothing the
    file names is imported (``numpy.f2py.__main__`` is refused without running it).
    Callables that could create a large object from a small size (``range``, ``bytes(n)``,
    ``list(...)``, an array shape, an index length) are charged to a budget of
    ``max_pickle_items`` elements, and ``DataFrame`` itself cannot be called.

    Example:
        >>> import io, pickle
        >>> from inspectkit.sources.lswmd import SafeUnpickler
        >>> SafeUnpickler(io.BytesIO(pickle.dumps([1, 2]))).load()
        [1, 2]
    """

    def __init__(self, file: BinaryIO, *, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        objects = _objects()
        self._budget = budget = _Budget((limits or get_limits()).max_pickle_items)

        def sized(name: str) -> Callable[..., Any]:
            make = objects[name]

            def build(*args: Any) -> Any:
                n = sum(_len(a) for a in args[:1])
                if name in ("bytes", "bytearray") and args and isinstance(args[0], int):
                    n = args[0]
                budget.charge(n, f"{name}{_short(args)}")
                return make(*args)

            return build

        def make_range(*args: Any) -> range:
            r = range(*args)
            budget.charge(_range_len(r), repr(r))
            return r

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
            budget.charge(
                _elements(shape) * np.dtype(dtype).itemsize, f"an array of shape {shape!r}"
            )
            return objects["_reconstruct"](_raw(subtype), shape, dtype)

        def scalar(dtype: Any, *data: Any) -> Any:
            given = len(data[0]) if data and isinstance(data[0], bytes | str) else 0
            budget.charge(np.dtype(dtype).itemsize - given, f"a {dtype} scalar")
            return objects["scalar"](dtype, *data)

        def reconstructor(cls: Any, base: Any, state: Any) -> Any:
            if base is not object:
                raise UnsafePickleError(
                    f"the pickle rebuilds {getattr(cls, '__name__', cls)} on the base "
                    f"{getattr(base, '__name__', base)}; only object is allowed"
                )
            return copyreg._reconstructor(_raw(cls), object, state)

        def new_index(cls: Any, d: Any) -> Any:
            cls = _raw(cls)
            if not isinstance(d, dict):
                raise UnsafePickleError(f"the pickle rebuilds an index from a {type(d).__name__}")
            if {"start", "stop"} <= set(d):
                n = _range_len(range(d["start"], d["stop"], d.get("step") or 1))
            else:
                n = _len(d.get("data"))
            budget.charge(n, f"a {cls.__name__} of {n:,} entries")
            return objects["_new_Index"](cls, d)

        def unpickle_backed(cls: Any, *args: Any) -> Any:
            return objects["unpickle_backed"](_raw(cls), *args)

        def encode(obj: Any, encoding: str = "utf-8", *rest: Any) -> Any:
            if not isinstance(encoding, str) or encoding.lower() not in _ENCODINGS:
                raise UnsafePickleError(f"the pickle encodes text as {encoding!r}; refused")
            return codecs.encode(obj, encoding, *rest)

        def array_size(shape: Any, dtype: Any = float, *rest: Any) -> int:
            return _elements(shape) * np.dtype(dtype).itemsize

        def index_size(data: Any = None, *rest: Any) -> int:
            return _len(data)

        self._resolved: dict[str, Any] = {
            **objects,
            **{name: sized(name) for name in _SIZED},
            "range": make_range,
            "_reconstruct": reconstruct,
            "scalar": scalar,
            "_reconstructor": reconstructor,
            "_new_Index": new_index,
            "unpickle_backed": unpickle_backed,
            "encode": encode,
            "ndarray": _Class(np.ndarray, budget, array_size),
            "Index": _Class(objects["Index"], budget, index_size),
            "RangeIndex": _Class(objects["RangeIndex"], budget, lambda *a: _range_len(range(*a))),
            "StringArray": _Class(objects["StringArray"], budget, index_size),
        }

    def find_class(self, module: str, name: str) -> Any:
        module, name = _rename(module, name)
        key = _ALLOWED.get((module, name))
        if key is None:
            raise _refuse(module, name)
        if key not in self._resolved:  # Arrow pieces: pyarrow is imported on first need
            self._resolved.update(_arrow_objects(self._budget))
        return self._resolved[key]


def _as_frame(obj: Any) -> Any:
    """The loaded object, a DataFrame of :func:`_objects` made a plain ``DataFrame``."""
    if isinstance(obj, _objects()["DataFrame"]):
        obj.__class__ = _objects()["DataFrame"].__mro__[1]
    return obj


#: Builtin containers charged by the length of what they are built from.
_SIZED = ("bytes", "bytearray", "list", "tuple", "set", "frozenset", "dict", "OrderedDict")


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
        f"the pickle references {module}.{name}, which is not among the pandas/NumPy pieces "
        "a DataFrame of wafer maps needs; refused before anything in the file ran (nothing "
        "was imported)"
    )


@applies_limits
def safe_load_pickle(
    path: str | os.PathLike[str], *, limits: Limits | Mapping[str, int] | None = None
) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (Python 2 pickles are retried as latin-1).

    The file may hold at most ``max_file_bytes`` and create at most ``max_pickle_items``
    elements from sizes (:class:`~inspectkit.sources.limits.Limits`; ``limits=`` for this
    call).

    Raises:
        UnsafePickleError: the file references a global outside the allowed list.
        SizeLimitError: the file, or what it asks to create, is over the limits.
        DataError: the file is missing, truncated or not a pickle.
    """
    p = Path(path)
    check_regular_file(p)
    over(p, "the file's size in bytes", p.stat().st_size, "max_file_bytes")
    for encoding in ("ASCII", "latin1"):
        try:
            with p.open("rb") as fh:
                return _as_frame(SafeUnpickler(fh, encoding=encoding).load())
        except DataError as exc:  # refused: name the file
            raise type(exc)(f"{p}: {exc}") from None
        except UnicodeDecodeError:
            continue  # written by Python 2: byte strings need latin-1
        except MemoryError:  # a length field claiming more than the file holds
            raise DataError(
                f"{p}: the pickle claims more memory than is available (a corrupt length?)"
            ) from None
        except Exception as exc:  # reconstruction of untrusted data: any failure = unreadable
            raise DataError(
                f"{p}: not a readable pandas pickle, or truncated ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]})"
            ) from None
    raise DataError(f"{p}: text in the pickle is neither ASCII nor latin-1")


_COLUMNS = ("waferMap", "failureType", "lotName", "waferIndex", "dieSize", "trianTestLabel")


def _columns(df: Any, p: Path, limit: int | None) -> dict[str, list[Any]]:
    """The LSWMD columns present, as lists of the first ``limit`` rows."""
    names = [str(c) for c in df.columns]
    missing = [c for c in ("waferMap", "failureType") if c not in names]
    if missing:
        raise DataError(
            f"{p}: columns {missing} missing; LSWMD.pkl has waferMap, dieSize, lotName, "
            f"waferIndex, trianTestLabel, failureType (found {names[:20]})"
        )
    if limit is not None:
        df = df.iloc[:limit]
    return {name: df[name].tolist() for name in _COLUMNS if name in names}


def _first_str(value: Any, where: str = "", column: str = "") -> str | None:
    """``[['Edge-Ring']]`` → ``'Edge-Ring'``; empty array / None / NaN → ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged nesting, objects numpy refuses
        raise DataError(f"{where}: {column} is not text or an array of text ({exc})") from None
    if arr.size == 0:
        return None
    first = arr.reshape(-1)[0]  # never converts a whole (possibly large) array
    if isinstance(first, bytes):
        first = first.decode("latin-1")
    text = str(first).strip()
    return text or None


def _split_name(value: Any) -> str | None:
    """``trianTestLabel`` (``[['Training']]``) as text; ``None`` when empty or unreadable."""
    try:
        text = _first_str(value)
    except DataError:
        return None
    return None if text is None else printable(text)


def _plain(value: Any) -> str | int | float | None:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    return printable(str(value))


def _wafer(value: Any, where: str) -> torch.Tensor:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # a cell holding something array-like that numpy rejects
        raise DataError(f"{where}: waferMap is not an array ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{where}: waferMap must be a non-empty 2-D array, got shape {arr.shape}")
    over(where, f"waferMap is {arr.shape[0]}×{arr.shape[1]} pixels", arr.size, "max_image_pixels")
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


@applies_limits
def load_lswmd(
    path: str | os.PathLike[str],
    *,
    unlabelled: Unlabelled = "keep",
    on_error: OnError = "raise",
    limit: int | None = None,
    classes: list[str] | None = None,
    limits: Limits | Mapping[str, int] | None = None,
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
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits` or a
            mapping of the ones to change); default: the process-wide limits.

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
    try:
        columns = _columns(df, p, limit)
    except DataError:
        raise
    except Exception as exc:  # a DataFrame rebuilt without its data (copyreg._reconstructor)
        raise DataError(
            f"{p}: holds a DataFrame that cannot be read ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from None
    n = len(columns["waferMap"])

    def column(name: str) -> list[Any]:
        return columns.get(name) or [None] * n

    maps, types = column("waferMap"), column("failureType")
    lots, indices, dies, splits = (
        column(c) for c in ("lotName", "waferIndex", "dieSize", "trianTestLabel")
    )
    class_list = list(classes) if classes is not None else list(WM811K_CLASSES)
    images: list[torch.Tensor] = []
    samples: list[SampleMeta] = []
    stem = printable(p.stem)
    template = SampleMeta(id=stem or "map", source=str(p))  # copied per row, see wafer.py
    for i in range(n):
        where = f"{p.name}[row {i}]"
        try:
            label = _first_str(types[i], where, "failureType")
        except DataError as exc:
            collector.skip(where, str(exc).removeprefix(f"{where}: "))
            continue
        if label is not None:
            label = printable(wafer_label(label))  # model_copy below does not validate
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
            "lswmd_split": _split_name(splits[i]),
        }
        samples.append(
            template.model_copy(
                update={
                    "id": f"{stem}:{i}",
                    "label": label,
                    "group": None if lot is None else printable(str(lot)),
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
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    unlabelled: Unlabelled = "keep" if purpose == "predict" else "skip"
    return load_lswmd(path, unlabelled=unlabelled, limit=limit, on_error=on_error)


LSWMD = register_layout(
    Layout(
        name="lswmd",
        detect=lambda p: p.is_file() and p.suffix.lower() in (".pkl", ".pickle"),
        load=_load_layout,
        priority=90,
        description="the original WM-811K LSWMD.pkl (pandas, read by a restricted unpickler)",
        on_error=True,
    )
)

__all__ = ["LSWMD", "SafeUnpickler", "load_lswmd", "safe_load_pickle"]
