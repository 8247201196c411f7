"""Streaming table ingest: every bad row is set aside with its reason; nothing is lost."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ae_models.preprocessing.tensor_column import batch_matrix
from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.io import tables as tabular
from tasks.io.readers import lines_base as csv_reader
from tasks.normalize import normalize_dataset
from tasks.validate import validate_config


def config(path, **source):
    return build_config(
        {
            "dataset": "t",
            "source": {"path": str(path), "max_quarantine_fraction": 0.5, **source},
            "model": {"code_size": 1},
        }
    )


def test_bad_csv_rows_go_to_quarantine(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(
        "id, when, x, flag, city\n"
        "a, 2024-01-01, 1.5, true, Oslo\n"
        "b, 2024-01-02, abc, false, Bergen\n"  # text in a numeric column
        "c, 2024-01-03, inf, true, Oslo\n"  # non-finite
        "d, 2024-01-04, 2, true\n"  # ragged
        "e, yesterday-ish, 3, false, Oslo\n"  # bad timestamp
        "a, 2024-01-01, 4, true, Oslo\n"  # duplicate (id, time): a true duplicate
        "f, 2024-01-07, ?, false, ?\n"  # missing values are fine
        "g, 2024-01-08, 5, maybe, Oslo\n"  # not a boolean
        + "".join(f"h{i}, 2024-02-0{i}, {i}, true, Oslo\n" for i in range(1, 5))
    )
    cfg = config(csv, entity_id="id", timestamp="when")
    validate_config(cfg)
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows + ingested.quarantined == 12
    raw = pq.read_table(ingested.path).to_pandas()
    assert raw["entity_id"].tolist() == ["a", "f", "h1", "h2", "h3", "h4"]
    assert np.isnan(raw["x"].iloc[1]) and pd.isna(raw["city"].iloc[1])
    reasons = {
        r["location"]: r["reason"] for r in pq.read_table(ingested.quarantine_path).to_pylist()
    }
    # the file's line 5 (the header is line 1): the reader alone does not know the number
    assert reasons["line 5"] == "expected 5 fields, got 4: 'd, 2024-01-04, 2, true'"
    assert reasons["row 1"] == "column 'x' has non-numeric value 'abc'"
    assert reasons["row 2"] == "column 'x' has a non-finite value 'inf'"
    assert reasons["row 3"] == "timestamp 'yesterday-ish' cannot be parsed"
    assert reasons["entity id 'a' at 2024-01-01T00:00:00+00:00"] == (
        "duplicate entity id 'a' at 2024-01-01T00:00:00+00:00"
    )
    assert reasons["row 6"] == "column 'flag' has non-boolean value 'maybe'"
    # what `aepipe run` and `aepipe score` print of them: the commonest kinds, the file
    note = ingested.quarantine_note()
    assert note.startswith(" (+6 quarantined: ") and note.endswith(f"; {ingested.quarantine_path})")
    assert "1 x expected N fields, got N" in note and ", …" in note  # 6 kinds, 3 shown
    assert str(raw["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert raw["flag"].tolist() == [True, False, True, True, True, True]


def test_csv_options(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.tsv"
    csv.write_text("1;'a;b';3\n4;'c';6\n7;'d';9\n")
    cfg = config(csv, delimiter=";", quote_char="'", header=False)
    ingested = ingest_source(cfg, tmp_stores)
    raw = pq.read_table(ingested.path).to_pandas()
    assert ingested.features == ["col_0", "col_1", "col_2"]
    assert raw["col_1"].tolist() == ["a;b", "c", "d"] and raw["col_0"].tolist() == [1, 4, 7]
    packed = tmp_path / "t.csv.gz"  # gzip CSV, a byte that is not UTF-8 in one row
    packed.write_bytes(gzip.compress(b"a,b\n1,x\n2,\xff\n3,z\n"))
    read = ingest_source(config(packed), tmp_stores)
    assert (read.rows, read.quarantined) == (2, 1)
    assert pq.read_table(read.path).column("b").to_pylist() == ["x", "z"]


def test_empty_and_unreadable_inputs(tmp_path, tmp_stores) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    with pytest.raises(ConfigError, match="has no rows"):
        ingest_source(config(empty), tmp_stores)
    # issue 40.4: said while the config is checked, before a Prefect server is started
    empty.write_text("a,b\n\n  \n")
    with pytest.raises(ConfigError, match=r"has no rows \(only its header line\)"):
        validate_config(config(empty), training=False)
    packed = tmp_path / "empty.csv.gz"
    packed.write_bytes(gzip.compress(b"a,b\n"))
    with pytest.raises(ConfigError, match=r"has no rows \(only its header line\)"):
        validate_config(config(packed), training=False)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(ConfigError, match="cannot read CSV header"):
        ingest_source(config(blank), tmp_stores)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("a,b\n1,caf\xe9\n2,the\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"1 of 2 rows \(50.0%\).*quarantine.parquet"):
        ingest_source(config(latin, max_quarantine_fraction=0.01), tmp_stores)
    kept = ingest_source(config(latin), tmp_stores)  # limit 50 %: the UTF-8 row gets through
    assert (kept.rows, kept.quarantined) == (1, 1)
    reason = pq.read_table(kept.quarantine_path).column("reason")[0].as_py()
    assert reason.startswith("column 'b' holds bytes that are not UTF-8 (set source.encoding")
    read = ingest_source(config(latin, encoding="latin-1"), tmp_stores)
    assert read.quarantined == 0
    assert pq.read_table(read.path).column("b").to_pylist() == ["caf\xe9", "the"]
    with pytest.raises(ValueError, match="unknown text encoding 'klingon'"):
        config(latin, encoding="klingon")


def test_parquet_folder_and_glob(tmp_path, tmp_stores) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        frame = pd.DataFrame({"x": np.arange(5.0) + 10 * i, "y": [f"k{i}"] * 5})
        pq.write_table(pa.Table.from_pandas(frame), folder / f"part-{i}.parquet")
    assert ingest_source(config(folder), tmp_stores).rows == 15
    assert ingest_source(config(f"{folder}/part-[01].parquet"), tmp_stores).rows == 10
    with pytest.raises(ConfigError, match="no Parquet files match"):
        validate_config(config(f"{folder}/none-*.parquet"))


@pytest.mark.slow
def test_adult_table(shared_datasets, tmp_stores) -> None:
    cfg = build_config(
        {
            "dataset": "adult",
            "source": {"path": str(shared_datasets / "adult" / "adult.data"), "label": "Salary"},
            "model": {"code_size": 8},
        }
    )
    validate_config(cfg)
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows + ingested.quarantined == 32561
    raw = pq.read_table(ingested.path).to_pandas()
    assert "Salary" not in ingested.features and set(raw["label"]) == {"<=50K", ">50K"}
    assert raw["workclass"].isna().sum() > 1000  # '?' is missing
    assert raw["workclass"].iloc[0] == "State-gov"  # spaces after the comma stripped
    data = normalize_dataset(ingested, cfg)
    assert "workclass=Private" in data.features and "workclass=__missing__" in data.features
    assert "age" in data.features and not any(f.startswith("Salary") for f in data.features)
    table = pq.read_table(data.path)
    x = batch_matrix(table)
    train = table.column("split").to_numpy(zero_copy_only=False) == "train"
    assert np.isfinite(x).all() and x[train].min() >= 0 and x[train].max() <= 1  # fitted there


@pytest.mark.parametrize(
    "values",
    [
        ["12", "007", None, "0"],  # plain digits: the regular expression is skipped
        ["12", "", None, "1.5", "-3", "1e5", "nan", "Inf", " 1", "١", "x"],
        [None, None],
        [],
    ],
)
def test_number_check_is_the_regular_expression(values) -> None:
    """The digits-only shortcut gives exactly what the full pattern gives."""
    arr = pa.array(values, pa.string())
    expected = pc.match_substring_regex(arr, tabular.NUMBER, ignore_case=True)
    assert tabular._is_number(arr).to_pylist() == expected.to_pylist()


def _read_all(path, workers, **source):
    """Every chunk's table and the quarantine of reading ``path`` with ``workers`` threads."""
    cfg = config(path, **source)
    from tasks.io.sources import inspect_source

    info = inspect_source(cfg.source)
    reader = tabular.TableReader(cfg.source, info.columns, info.features, None, workers=workers)
    chunks = list(reader.chunks())
    table = pa.concat_tables(c.table for c in chunks)
    quarantine = reader.ragged + [q for c in chunks for q in c.quarantine]
    return table, sorted(quarantine), [p for c in chunks for p in c.positions]


def test_blocks_parsed_in_parallel_give_what_one_block_gives(tmp_path, monkeypatch) -> None:
    """Byte ranges cut at line ends, parsed on two threads: the same rows in the same order,
    the same quarantine (ragged lines with their line numbers, a byte that is not UTF-8),
    blank lines and Windows line ends included."""
    lines = ["id,x,city"]
    for i in range(400):
        if i % 97 == 5:
            lines.append(f"r{i},{i}")  # ragged
        elif i % 89 == 7:
            lines.append("")
        else:
            lines.append(f"r{i},{i * 0.5},c{i % 7}")
    data = "\r\n".join(lines).encode() + b"\r\nbad,1,caf\xe9\r\n"
    csv = tmp_path / "t.csv"
    csv.write_bytes(data)
    one = _read_all(csv, workers=1)
    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 64)  # dozens of blocks
    many = _read_all(csv, workers=2)
    assert one[0].equals(many[0]) and one[1] == many[1] and one[2] == many[2]
    table, quarantine, _ = many
    assert table.num_rows == 400 - 5 - 5  # 5 ragged, 5 blank lines; the bad row aside
    assert table.column("x").to_pylist()[:2] == [0.0, 0.5]
    locations = [where for where, _ in quarantine]
    assert "line 7" in locations  # r5, after the header and r0..r4
    assert any("not UTF-8" in reason for _, reason in quarantine)


def test_a_byte_order_mark_is_not_read_as_data(tmp_path) -> None:
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbf7,a\n8,b\n")
    table, quarantine, _ = _read_all(csv, workers=2, header=False)
    assert table.column("col_0").to_pylist() == [7.0, 8.0] and not quarantine


def test_a_line_too_long_is_quarantined_and_memory_stays_bounded(
    tmp_path, tmp_stores, monkeypatch
) -> None:
    """One line longer than MAX_LINE_BYTES (16 MiB; 4 KiB here) among good ones is set aside
    as ``line N`` unread, in blocks, and the rest of the file ingests; gzip the same. (Before:
    pyarrow's "straddling object" refused the whole source, and a 2 GiB line was held whole.)"""
    monkeypatch.setattr(csv_reader, "MAX_LINE_BYTES", 4096)
    lines = ["a,b"] + [f"{i},{i * 2}" for i in range(50)]
    lines.insert(20, "7," + "9" * 20_000)  # line 21: 20 KB of digits, no line end for a while
    for name, opener in (("long.csv", open), ("long.csv.gz", gzip.open)):
        path = tmp_path / name
        with opener(path, "wt") as fh:
            fh.write("\n".join(lines) + "\n")
        monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 1000)  # the line spans many reads
        ingested = ingest_source(config(path), tmp_stores)
        assert ingested.rows == 50 and ingested.quarantined == 1
        (bad,) = pq.read_table(ingested.quarantine_path).to_pylist()
        assert bad["location"] == "line 21"
        assert bad["reason"].startswith("line of 20,003 bytes, longer than the 4,096-byte limit")
    # a text line long enough to matter is refused from the header on, before any work
    header = tmp_path / "header.csv"
    header.write_text("a" * 10_000 + "\n1\n")
    with pytest.raises(ConfigError, match="longer than 4,096 bytes"):
        validate_config(config(header))


def test_a_quoted_line_break_in_the_header_is_refused_not_a_phantom_row(tmp_path) -> None:
    path = tmp_path / "h.csv"
    path.write_text('"first\nname",b\n1,2\n3,4\n')
    with pytest.raises(ConfigError, match="line break inside the quoted column name"):
        validate_config(config(path))


def test_the_key_ledger_finds_repeats_as_a_set_of_the_keys_would(tmp_path) -> None:
    """The duplicate check's ledger (two hashes a key, spilled to files by hash) names the
    rows whose key an earlier row has, exactly as a set of the texts does, across many
    batches and spills; (id, time) pairs are keys of their own."""
    from tasks.io.keys import KeyLedger, key_hashes, repeated

    rng = np.random.default_rng(0)
    seen: set[str] = set()
    expected = []
    with KeyLedger(tmp_path, buckets=8, buffer_rows=500) as ledger:
        for batch in range(40):
            keys = pd.Series([f"k{v}" for v in rng.integers(0, 5000, 300)], dtype="string")
            hashes = key_hashes(pa.array(keys))
            assert (repeated(hashes) == keys.duplicated().to_numpy()).all()
            for i, k in enumerate(keys):
                if k in seen:
                    expected.append(batch * 300 + i)
                seen.add(k)
            ledger.add(hashes)
        assert len(list(ledger.folder.iterdir())) == 8  # spilled, one file a bucket
        assert ledger.repeats().tolist() == expected
    assert not ledger.folder.exists()
    ids = pa.array(["a", "a", "b", "a"])  # versions: (id, time) pairs
    ts = pa.array([0, 86_400_000_000, 0, 0], pa.timestamp("us", tz="UTC"))
    paired = key_hashes(ids, ts)
    assert repeated(paired).tolist() == [False, False, False, True]


def test_duplicates_found_from_key_files_or_from_the_parts_agree(tmp_path) -> None:
    """The merge reads the key hashes a partition's ingest wrote beside it, or, where that
    file is not on this machine (a Dask worker elsewhere wrote the part), hashes the part's
    ids again: the same rows are found either way."""
    from tasks.io.keys import KeyFile
    from tasks.io.parts import cross_part_duplicates

    parts = []
    for index, ids in enumerate([["a", "b", "c", "a"], ["d", "b", "e"]]):
        path = tmp_path / f"part-{index}.parquet"
        ts = pa.array([0] * len(ids), pa.timestamp("us", tz="UTC"))
        pq.write_table(pa.table({"entity_id": ids, "event_timestamp": ts}), path)
        with KeyFile(tmp_path / f"part-{index}.keys") as keys:
            keys.add(pa.chunked_array([ids]), None)
        parts.append((index, str(path), str(tmp_path / f"part-{index}.keys")))
    from_files = cross_part_duplicates(parts, False, tmp_path)
    rehashed = cross_part_duplicates([(i, p, None) for i, p, _ in parts], False, tmp_path)
    assert {k: v.tolist() for k, v in from_files[0].items()} == {
        0: [False, False, False, True],
        1: [False, True, False],
    }
    assert {k: v.tolist() for k, v in rehashed[0].items()} == {
        k: v.tolist() for k, v in from_files[0].items()
    }
    assert from_files[1] == rehashed[1] == ["duplicate entity id 'a'", "duplicate entity id 'b'"]
