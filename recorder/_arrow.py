"""Arrow arrays from Python lists and numpy, and numpy from Arrow, without pyarrow's pandas check.

``pa.array``, ``pa.scalar``, ``Array.to_numpy`` and every compute call given a Python scalar ask
pyarrow's pandas shim whether pandas is around, and the first asking imports it: in a training
process that never uses pandas, that is 25-30 MB of private memory per rank and a GIL held for
the whole import (hundreds of milliseconds) by the recorder's writer thread, at its first flush.
Arrays built from their buffers (``Array.from_buffers``) and compute between arrays never ask; the
recorder builds everything it writes here. ``tests/test_neighbours.py`` checks that a recorded job
with its sampler running never imports pandas.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NUMPY = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


class Codes(dict):
    """value -> small int, numbered in order of first sight: ``list(map(codes.__getitem__, column))``."""

    def __missing__(self, key):
        code = self[key] = len(self)
        return code


def _bitmap(flags: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(np.asarray(flags, dtype=bool), bitorder="little"))


def from_numpy(values: np.ndarray, type_: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """An array of a numeric or boolean ``type_`` over ``values``; ``valid`` (bool) marks the non-nulls."""
    n = len(values)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        nulls = n - int(np.count_nonzero(valid))
    validity = _bitmap(valid) if valid is not None and nulls else None
    if pa.types.is_boolean(type_):
        data = _bitmap(values)
    else:
        data = pa.py_buffer(np.ascontiguousarray(values, dtype=_NUMPY[type_]))
    return pa.Array.from_buffers(type_, n, [validity, data], null_count=nulls if validity is not None else 0)


def nullable(column: list, dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """A list of numbers or None as (values with 0 for None, valid flags or None when all are valid)."""
    if None not in column:
        return np.fromiter(column, dtype=dtype, count=len(column)), None
    objects = np.array(column, dtype=object)
    valid = np.not_equal(objects, None)
    return np.where(valid, objects, 0).astype(dtype), valid


def numeric(column: list, type_: pa.DataType) -> pa.Array:
    """A list of numbers or None as an Arrow array of the numeric ``type_``."""
    values, valid = nullable(column, _NUMPY[type_])
    return from_numpy(values, type_, valid)


def strings(values: list) -> pa.StringArray:
    """A list of str or None as a string array."""
    valid = None
    if None in values:
        valid = np.not_equal(np.array(values, dtype=object), None)
        values = ["" if v is None else v for v in values]
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    nulls = 0 if valid is None else len(values) - int(np.count_nonzero(valid))
    buffers = [_bitmap(valid) if nulls else None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers, null_count=nulls)


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as a table of ``schema``, whose fields are strings, ints or floats."""
    arrays = []
    for field in schema:
        column = [row.get(field.name) for row in rows]
        arrays.append(strings(column) if pa.types.is_string(field.type) else numeric(column, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def dictionary(indices: np.ndarray, values: list) -> pa.DictionaryArray:
    """dictionary<int32, string> of ``values[indices]``; a None value (or a negative index) is a null."""
    unique = Codes()
    # Equal values share one entry; the trailing -1 keeps a negative index null.
    remap = np.array([-1 if v is None else unique[v] for v in values] + [-1], dtype=np.int32)
    codes = remap[np.asarray(indices, dtype=np.intp)]
    valid = codes >= 0
    return pa.DictionaryArray.from_arrays(from_numpy(np.maximum(codes, 0), pa.int32(), valid), strings(list(unique)))


def encode(column: list) -> pa.DictionaryArray:
    """A list of str or None as dictionary<int32, string>, values in order of first sight."""
    codes = Codes()
    indices = np.fromiter(map(codes.__getitem__, column), dtype=np.int32, count=len(column))
    return dictionary(indices, list(codes))


def to_numpy(array: pa.Array | pa.ChunkedArray, fill=0) -> np.ndarray:
    """A numeric or boolean array as numpy, nulls replaced by ``fill``."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n, offset = len(array), array.offset
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        values = bits[offset : offset + n].astype(bool)
    else:
        values = np.frombuffer(data, dtype=_NUMPY[array.type], count=n, offset=offset * array.type.byte_width)
    if array.null_count == 0:
        return values.copy()
    return np.where(valid(array), values, fill)


def valid(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The non-null flags of an array, as numpy bools."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)
