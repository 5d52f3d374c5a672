"""Flight Recorder's pickled dumps read as plain values only: nothing in a dump ever runs."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from analysis.safepickle import UnsafePickle, loads

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "flight_recorder"


def test_a_real_flight_recorder_dump_reads_as_torch_writes_it():
    dump = loads((FIXTURES / "rank0.pickle").read_bytes())
    as_json = json.loads((FIXTURES / "rank0.json").read_text())
    assert dump["version"] == as_json["version"]
    assert [e["profiling_name"] for e in dump["entries"]] == [e["profiling_name"] for e in as_json["entries"]]
    assert [e["collective_seq_id"] for e in dump["entries"]] == [1, 2, 3, 4]
    assert dump["entries"][0]["process_group"] == ("0", "default_pg")  # a tuple, as pickled
    assert dump["entries"][0]["input_sizes"] == [[16]]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path: Path, protocol: int):
    marker = tmp_path / "ran"
    data = pickle.dumps({"entries": [_RunsCode(marker)]}, protocol=protocol)
    with pytest.raises(UnsafePickle, match="GLOBAL|STACK_GLOBAL") as caught:
        loads(data)
    assert "only plain values are read" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


PLAIN = [None, True, 3, -(2**70), 1.5, "text", [1, [2, [3]]], (1, "a"), {"k": {"v": [None]}}]


@pytest.mark.parametrize("value", PLAIN + [b"bytes", {1, 2}, frozenset({3})], ids=repr)
def test_plain_values_read_as_pickle_reads_them(value):
    """From the protocol that writes each natively (bytes from 3, sets from 4: before, pickle writes
    them as a call to a global, which is refused like any other)."""
    first = 4 if isinstance(value, set | frozenset) else 3 if isinstance(value, bytes) else 0
    for protocol in range(first, pickle.HIGHEST_PROTOCOL + 1):
        assert loads(pickle.dumps(value, protocol=protocol)) == value
    for protocol in range(first):
        with pytest.raises(UnsafePickle, match="GLOBAL"):
            loads(pickle.dumps(value, protocol=protocol))


@pytest.mark.parametrize(
    "data, says",
    [
        ((FIXTURES / "rank0.pickle").read_bytes()[:700], "not a readable pickle"),
        (b"not a pickle at all", "not a readable pickle"),
        (b"", "not a readable pickle"),
        (pickle.dumps(object, protocol=2), "GLOBAL"),
    ],
    ids=["cut short", "text", "empty", "a class"],
)
def test_what_is_not_plain_is_one_line(data: bytes, says: str):
    with pytest.raises(UnsafePickle, match=says) as caught:
        loads(data)
    assert "\n" not in str(caught.value)
