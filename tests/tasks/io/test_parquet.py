"""Parquet writing: encodings per kind of column, and the background-thread sink."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.io.parquet import ParquetSink, write_options, write_table


def table(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "entity_id": pa.array([f"r{i}" for i in range(start, start + n)]),
            "pixel_0": pa.array(np.arange(n, dtype=np.uint8)),
            "x": pa.array(np.linspace(0, 1, n, dtype=np.float32)),
        }
    )


def test_each_kind_of_column_gets_its_encoding(tmp_path) -> None:
    write_table(table(50), tmp_path / "t.parquet")
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    ids, pixels, x = (meta.column(i) for i in range(3))
    assert ids.dictionary_page_offset is not None and ids.is_stats_set
    assert "BYTE_STREAM_SPLIT" in pixels.encodings and pixels.compression == "LZ4"
    assert not pixels.is_stats_set and not x.is_stats_set
    assert x.dictionary_page_offset is None and x.compression == "SNAPPY"
    assert pq.read_table(tmp_path / "t.parquet").equals(table(50))
    assert not list(tmp_path.glob(".*tmp"))  # written aside, then renamed


def test_sink_writes_every_table_in_order(tmp_path) -> None:
    parts = [table(10, 10 * k) for k in range(5)]
    with ParquetSink(tmp_path / "s.parquet") as sink:
        for part in parts:
            sink.write(part)
    assert sink.rows == 50
    written = pq.read_table(tmp_path / "s.parquet")
    assert written.equals(pa.concat_tables(parts).combine_chunks())
    assert written.column("entity_id").to_pylist() == [f"r{i}" for i in range(50)]
    assert not list(tmp_path.glob(".*tmp"))  # written aside, then renamed


def test_a_sink_given_no_rows_leaves_no_file(tmp_path) -> None:
    with ParquetSink(tmp_path / "s.parquet") as sink:
        sink.write(table(0))
    assert sink.rows == 0 and not list(tmp_path.iterdir())
    assert set(write_options(table(1).schema)["use_dictionary"]) == {"entity_id"}


def test_a_failed_write_surfaces_and_leaves_no_file(tmp_path) -> None:
    """A table that cannot take the first table's schema fails in the writer thread: the
    error reaches the caller and the partial file is removed."""
    odd = pa.table({"entity_id": ["a"], "pixel_0": ["not a number"], "x": [0.5]})
    with pytest.raises(pa.ArrowInvalid), ParquetSink(tmp_path / "s.parquet") as sink:
        sink.write(table(10))
        sink.write(odd)
        for _ in range(5):  # the caller goes on until the failure reaches it
            sink.write(table(10))
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary


def test_an_error_in_the_caller_removes_the_partial_file(tmp_path) -> None:
    with pytest.raises(KeyError), ParquetSink(tmp_path / "s.parquet") as sink:
        sink.write(table(10))
        raise KeyError("the caller failed")
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary


def test_read_ahead_keeps_order_raises_where_it_failed_and_stops_when_left() -> None:
    import threading
    import time

    from tasks.io.parquet import read_ahead

    assert list(read_ahead(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise OSError("disk gone")

    got = read_ahead(failing())
    assert next(got) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(got)
    produced = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    stream = read_ahead(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer leaves: the producer stops, its thread ends
    time.sleep(0.1)
    assert len(produced) <= 4 and threading.active_count() == before
