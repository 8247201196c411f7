"""Sources of several line files (CSV, JSON lines): a folder or glob of them read as one
table, partitioned by files and byte ranges when rows have ids, every file's header checked,
bad rows named by their file, and a folder read incrementally past its newest file."""

from __future__ import annotations

import itertools
import json
import os

import pyarrow.parquet as pq
import pytest

from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.ingest import plan_ingest
from tasks.io.readers import detect_format, get_reader
from tasks.io.readers.base import IncrementalUnavailable


def _csv(start: int, n: int, header: str = "id,a,b,c") -> str:
    rows = [f"r{i},{i % 7},{i * 0.5:.1f},{'xyz'[i % 3]}" for i in range(start, start + n)]
    return "\n".join([header, *rows]) + "\n"


def _cfg(path, **source) -> object:
    return build_config(
        {"source": {"path": str(path), **source}, "dataset": "lines", "partition_rows": 100}
    )


def test_a_folder_of_csv_files_is_one_table_in_partitions(
    tmp_path, tmp_stores, monkeypatch
) -> None:
    """Issue 42: a landing folder of CSV files is read whole; with ids it splits into
    partitions of about partition_rows rows, and gives the rows one partition gives."""
    from tasks.io.readers import lines_base

    monkeypatch.setattr(lines_base, "MIN_PART_BYTES", 1)  # partitions of a few KB
    folder = tmp_path / "landing"
    folder.mkdir()
    for hour in range(3):
        (folder / f"h{hour}.csv").write_text(_csv(hour * 80, 80))
    (folder / "README.md").write_text("not data")
    assert detect_format(str(folder)) == "csv"
    cfg = _cfg(folder, entity_id="id")
    plan = plan_ingest(cfg, tmp_stores)
    assert [[os.path.basename(f) for f in p.files] for p in plan.parts] == [
        ["h0.csv"],
        ["h1.csv"],
        ["h2.csv"],
    ]
    split = ingest_source(cfg, tmp_stores)
    whole = ingest_source(_cfg(folder), tmp_stores)  # no ids: one partition, rows numbered
    assert split.rows == whole.rows == 240
    ids = pq.read_table(split.path, columns=["entity_id"])["entity_id"].to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(240))
    numbers = pq.read_table(whole.path, columns=["entity_id"])["entity_id"].to_pylist()
    assert numbers == [str(i) for i in range(240)]


def test_a_large_file_splits_into_byte_ranges_at_line_ends(tmp_path, tmp_stores) -> None:
    """Issue 42: one large uncompressed CSV is cut into ranges, each from a line start to a
    line end; the rows are the whole file's, and a ragged line is named by its line."""
    path = tmp_path / "big.csv"
    text = _csv(0, 200_000).splitlines()
    text[150_001] = "r150000,1,2"  # one field short: line 150,002 of the file
    path.write_text("\n".join(text) + "\n")
    cfg = _cfg(path, entity_id="id", max_quarantine_fraction=0.01)
    cfg = cfg.model_copy(update={"partition_rows": 40_000})
    plan = plan_ingest(cfg, tmp_stores)
    spans = [r for p in plan.parts for r in p.ranges]
    assert len(spans) >= 3 and spans[0][0] == 0 and spans[-1][1] == path.stat().st_size
    data = path.read_bytes()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start and data[start - 1 : start] == b"\n"
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows == 199_999 and ingested.quarantined == 1
    where = pq.read_table(ingested.quarantine_path)["location"].to_pylist()
    assert where == ["big.csv line 150002"]


def test_a_bad_value_is_named_by_its_file_and_row(tmp_path, tmp_stores, monkeypatch) -> None:
    from tasks.io.readers import lines_base

    monkeypatch.setattr(lines_base, "MIN_PART_BYTES", 1)
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "a.csv").write_text(_csv(0, 50))
    (folder / "b.csv").write_text(_csv(50, 50).replace("r60,4,", "r60,lots,"))
    ingested = ingest_source(_cfg(folder, entity_id="id"), tmp_stores)
    quarantine = pq.read_table(ingested.quarantine_path).to_pylist()
    assert [(q["location"], "non-numeric value 'lots'" in q["reason"]) for q in quarantine] == [
        ("b.csv row 10", True)
    ]


def test_files_with_another_header_are_refused_naming_the_file(tmp_path, tmp_stores) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "a.csv").write_text(_csv(0, 50))
    (folder / "b.csv").write_text(_csv(50, 50, header="id,b,a,c"))
    with pytest.raises(ConfigError, match=r"b\.csv' has the same columns in another order"):
        ingest_source(_cfg(folder, entity_id="id"), tmp_stores)
    (folder / "b.csv").write_text(_csv(50, 50, header="id,a,b,d"))
    with pytest.raises(ConfigError, match=r"b\.csv' lacks \['c'\] and has \['d'\]"):
        ingest_source(_cfg(folder, entity_id="id"), tmp_stores)


def test_a_folder_of_json_lines_reads_only_newer_files_past_its_marker(tmp_path) -> None:
    """Issue 42: a folder gaining a file an hour reads only the new file past the last
    read's marker, as a Parquet folder does."""
    folder = tmp_path / "events"
    folder.mkdir()
    for hour in range(2):
        rows = [{"id": f"e{hour}-{i}", "v": i} for i in range(20)]
        (folder / f"h{hour}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        os.utime(folder / f"h{hour}.jsonl", ns=(10**18 + hour, 10**18 + hour))
    src = _cfg(folder, entity_id="id").source
    assert src.resolved_format == "jsonl"
    reader = get_reader("jsonl")
    since = reader.marker(src)
    assert since == f"{10**18 + 1}/2"
    with pytest.raises(IncrementalUnavailable, match=r"no file of .* is newer"):
        reader.plan(src, 100, None, since)
    (folder / "h2.jsonl").write_text(json.dumps({"id": "e2-0", "v": 1}))
    plan = reader.plan(src, 100, None, since)
    assert [os.path.basename(f) for p in plan.parts for f in p.files] == ["h2.jsonl"]
    with pytest.raises(IncrementalUnavailable, match="read whole"):
        reader.plan(_cfg(folder / "h0.jsonl", entity_id="id").source, 100, None, since)


def test_a_folder_is_the_kind_most_of_its_files_are(tmp_path) -> None:
    """A manifest CSV beside a folder's images does not make it a CSV source."""
    from PIL import Image

    for i in range(3):
        Image.new("L", (4, 4)).save(tmp_path / f"{i}.png")
    (tmp_path / "manifest.csv").write_text("file,label\n0.png,a\n")
    assert detect_format(str(tmp_path)) == "images"
