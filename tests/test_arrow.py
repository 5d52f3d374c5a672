"""recorder._arrow builds what pa.array would, without asking pyarrow's pandas shim."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recorder import _arrow
from recorder.schema import PROBE_SCHEMA


@pytest.mark.parametrize(
    ("values", "type_"),
    [
        ([1, 2, 3], pa.int64()),
        ([1, None, -(2**40), None], pa.int64()),
        ([None, None], pa.int32()),
        ([], pa.int64()),
        ([7, None, 0], pa.int32()),
        ([0.5, None, 2.0], pa.float64()),
    ],
)
def test_numbers_match_pa_array(values, type_):
    got = _arrow.numeric(values, type_)
    got.validate(full=True)
    assert got.equals(pa.array(values, type_))


@pytest.mark.parametrize("values", [["ab", "", "héllo"], ["x", None, ""], [None], []])
def test_strings_and_dictionaries_match(values):
    got = _arrow.strings(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, pa.string()))
    encoded = _arrow.encode(values)
    encoded.validate(full=True)
    assert encoded.type == pa.dictionary(pa.int32(), pa.string())
    assert encoded.to_pylist() == values


def test_dictionary_shares_equal_values_and_nulls_none_and_negative_indices():
    got = _arrow.dictionary(np.array([0, 1, 2, 3, -1]), ["a", None, "a", "b"])
    got.validate(full=True)
    assert got.to_pylist() == ["a", None, "a", "b", None]
    assert got.dictionary.to_pylist() == ["a", "b"]


def test_to_numpy_and_valid_respect_offsets_and_nulls():
    array = pa.array([5, None, 7, 8, None], pa.int64()).slice(1)
    assert _arrow.to_numpy(array, fill=-1).tolist() == [-1, 7, 8, -1]
    assert _arrow.valid(array).tolist() == [False, True, True, False]
    flags = pa.array([True, False, True, True, False, False, True, False, True]).slice(3)
    assert _arrow.to_numpy(flags).tolist() == [True, False, False, True, False, True]
    chunked = pa.chunked_array([pa.array([1, 2], pa.int32()), pa.array([3], pa.int32())])
    assert _arrow.to_numpy(chunked).tolist() == [1, 2, 3]


def test_probe_rows_as_pa_would_build_them():
    rows = [
        {"phase": "start", "round": 0, "src_rank": 2, "src_host": "h1", "dst_rank": 0, "dst_host": "h0"}
        | {"bytes": 1 << 20, "repetitions": 5, "transfer_s": 0.01, "bandwidth_gbps": 0.1, "t_ns": 123},
        {"phase": "end", "round": 1, "src_rank": 3, "src_host": None, "dst_rank": 0, "dst_host": "h0"}
        | {"bytes": 8, "repetitions": 5, "transfer_s": None, "bandwidth_gbps": None, "latency_us": 12.5, "t_ns": 9},
    ]
    got = _arrow.table(rows, PROBE_SCHEMA)
    got.validate(full=True)
    assert got.equals(pa.Table.from_pylist(rows, schema=PROBE_SCHEMA))
