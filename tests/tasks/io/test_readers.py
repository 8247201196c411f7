"""Source readers beyond local CSV and Parquet: JSON lines, and a real PostgreSQL table or
query read through ADBC; each ingested as a table with its roles, its bad rows set aside,
its bad settings refused in one line."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.io.readers import get_reader
from tasks.io.sources import inspect_source
from tasks.normalize import normalize_dataset
from tests.services import free_port, postgres


def _rows(n: int) -> list[dict]:
    return [
        {
            "id": f"u{i}",
            "when": f"2024-01-{1 + i % 28:02d}T00:00:00Z",
            "amount": i * 1.5,
            "geo": {"city": ["x", "y", "z"][i % 3], "zip": 1000 + i % 5},
            "active": i % 2 == 0,
        }
        for i in range(n)
    ]


def test_json_lines_are_flattened_typed_and_bad_lines_set_aside(tmp_path, tmp_stores) -> None:
    rows = _rows(200)
    lines = [json.dumps(r) for r in rows]
    lines[50] = '{"id": "u50", "amount": "lots"'  # cut short: not JSON
    lines[60] = "[1, 2]"  # JSON, not an object
    rows[70]["amount"] = "n/a"  # a number column with text: the row is set aside
    lines[70] = json.dumps(rows[70])
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    cfg = build_config(
        {
            "source": {
                "path": str(path),
                "entity_id": "id",
                "timestamp": "when",
                "max_quarantine_fraction": 0.05,
            },
            "dataset": "events",
        }
    )
    info = inspect_source(cfg.source)
    assert info.format == "jsonl"
    assert info.features == ["amount", "geo.city", "geo.zip", "active"]
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows == 197 and ingested.quarantined == 3
    reasons = pq.read_table(ingested.quarantine_path).to_pylist()
    by_where = {r["location"]: r["reason"] for r in reasons}
    assert by_where["line 51"].startswith("not JSON")
    assert by_where["line 61"].startswith("a JSON list, not an object")
    assert "non-numeric value 'n/a'" in next(r for w, r in by_where.items() if w.startswith("row"))
    raw = pq.read_table(ingested.path)
    assert raw.schema.field("amount").type == "double"
    assert raw.schema.field("active").type == "bool"
    assert raw.column("geo.city").to_pylist()[:3] == ["x", "y", "z"]
    assert normalize_dataset(ingested, cfg).split_rows["train"] > 100


def test_json_lines_with_lists_are_refused_unless_excluded(tmp_path, tmp_stores) -> None:
    path = tmp_path / "t.ndjson"
    path.write_text("\n".join(json.dumps({"a": i, "tags": ["p", "q"]}) for i in range(20)))
    with pytest.raises(ConfigError, match=r"field\(s\) \['tags'\] of .* hold lists"):
        inspect_source(build_config({"source": {"path": str(path)}}).source)
    cfg = build_config({"source": {"path": str(path), "exclude": ["tags"]}, "dataset": "t"})
    assert inspect_source(cfg.source).features == ["a"]
    assert ingest_source(cfg, tmp_stores).rows == 20


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> str:
    """A real PostgreSQL server holding ``people`` (1,000 rows: an id, a time, numbers,
    a numeric, text, a boolean) and ``blobs`` (a bytea column); its URI, no password."""
    import sqlalchemy as sa

    with postgres(tmp_path_factory.mktemp("pg")) as uri:
        engine = sa.create_engine(uri)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE people (id text, seen timestamptz, age int, "
                    "income numeric(10, 2), city text, member boolean)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO people SELECT 'p' || i, timestamptz '2024-01-01' + i * "
                    "interval '1 hour', 20 + i % 50, i * 10.25, (ARRAY['a','b','c'])[1 + i % 3], "
                    "i % 4 = 0 FROM generate_series(1, 1000) AS i"
                )
            )
            conn.execute(sa.text("CREATE TABLE blobs (id int, data bytea, x float8)"))
            conn.execute(sa.text("INSERT INTO blobs VALUES (1, 'ab', 1.0), (2, 'cd', 2.0)"))
        engine.dispose()
        yield uri


def test_a_postgres_table_and_query_are_ingested_through_arrow(database, tmp_stores) -> None:
    source = {"path": database, "table": "people", "entity_id": "id", "timestamp": "seen"}
    cfg = build_config({"source": source})
    assert cfg.dataset == "people"  # named after the table
    assert inspect_source(cfg.source).features == ["age", "income", "city", "member"]
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows == 1000 and ingested.quarantined == 0
    raw = pq.read_table(ingested.path)
    assert raw.schema.field("income").type == "double"  # numeric arrives as a number
    assert sorted(raw.column("entity_id").to_pylist())[:2] == ["p1", "p10"]
    assert raw.column("income").to_pylist()[0] == 10.25
    query = {"path": database, "query": "SELECT id, age, city FROM people WHERE age < 30"}
    small = build_config({"source": {**query, "entity_id": "id"}, "dataset": "young"})
    assert ingest_source(small, tmp_stores).rows == 200
    # unchanged table: the same folder (cached); a new row: another
    again = ingest_source(cfg, tmp_stores)
    assert again.path == ingested.path
    import sqlalchemy as sa

    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO people VALUES ('new', now(), 1, 1, 'a', true)"))
    engine.dispose()
    grown = ingest_source(cfg, tmp_stores)
    assert grown.rows == 1001 and grown.path != ingested.path


def test_bad_database_sources_fail_in_one_line(database, monkeypatch) -> None:
    def refused(source: dict) -> str:
        with pytest.raises(ConfigError) as err:
            inspect_source(build_config({"source": source, "dataset": "d"}).source)
        message = str(err.value)
        assert "\n" not in message
        return message

    closed = f"postgresql://aepipe@127.0.0.1:{free_port()}/postgres"
    assert "cannot connect to the source database" in refused({"path": closed, "table": "t"})
    assert "does not exist" in refused({"path": database, "table": "nope"})
    empty = refused({"path": database, "query": "SELECT * FROM people WHERE false"})
    assert "source.query of the source database has no rows" in empty
    blob = refused({"path": database, "table": "blobs"})
    assert "data (binary)" in blob and "source.exclude" in blob
    assert refused({"path": database}).startswith("a SQL source needs source.table")
    with_password = database.replace("aepipe@", "aepipe:s3cret@")
    message = refused({"path": with_password, "table": "people"})
    assert "PGPASSWORD" in message and "s3cret" not in message
    ok = {"path": database, "table": "blobs", "exclude": ["data"]}
    assert inspect_source(build_config({"source": ok, "dataset": "b"}).source).features == [
        "id",
        "x",
    ]


def test_a_wrong_password_is_never_echoed(database, monkeypatch) -> None:
    """A server that asks for a password (the reader's connect refused) names the database
    with its user blanked, and says nothing of the password PGPASSWORD held."""
    monkeypatch.setenv("PGPASSWORD", "hunter2-wrong")
    closed = f"postgresql://someone@127.0.0.1:{free_port()}/postgres"
    src = build_config({"source": {"path": closed, "table": "t"}, "dataset": "d"}).source
    with pytest.raises(ConfigError) as err:
        get_reader("sql").check_exists(src)
    assert "hunter2" not in str(err.value) and "someone" not in str(err.value)


def test_reader_registry_names_every_kind_and_auto_finds_them(tmp_path) -> None:
    from tasks.io.readers import detect_format, reader_names

    assert set(reader_names()) >= {"csv", "parquet", "jsonl", "sql", "images", "idx", "npz"}
    assert detect_format("postgresql://me@db/warehouse") == "sql"
    assert detect_format(str(tmp_path / "x.ndjson")) == "jsonl"
    with pytest.raises(ConfigError, match="unknown source format 'xls'"):
        build_config({"source": {"path": "a.xls", "format": "xls"}})
    assert os.fspath(Path("digits")) and detect_format("digits") == "builtin"


def _people(rows: int, sep: str) -> str:
    lines = [sep.join(["id", "a", "b", "c"])]
    lines += [sep.join([f"r{i}", str(i % 7), f"{i * 0.5:.1f}", "xyz"[i % 3]]) for i in range(rows)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("sep", [";", "\t", "|", ","])
def test_the_csv_delimiter_is_sniffed(tmp_path, tmp_stores, sep) -> None:
    """Issue 42: a ';'-separated file trained on one text column named 'id;a;b;c'."""
    path = tmp_path / "t.csv"
    path.write_text(_people(300, sep))
    cfg = build_config({"source": {"path": str(path), "entity_id": "id"}, "dataset": "t"})
    info = inspect_source(cfg.source)
    assert info.columns == ["id", "a", "b", "c"] and info.features == ["a", "b", "c"]
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows == 300 and ingested.quarantined == 0


def test_the_sniffed_delimiter_is_said_once_a_flow_run(prefect_server, tmp_path, caplog) -> None:
    """The choice is one line of the run's log, however often the header is read."""
    from prefect import flow

    path = tmp_path / "t.csv"
    path.write_text(_people(50, "|"))
    src = build_config({"source": {"path": str(path)}, "dataset": "t"}).source

    @flow
    def reads_the_header_twice() -> None:
        inspect_source(src)
        inspect_source(src)

    with caplog.at_level("INFO", logger="prefect.flow_runs"):  # the run's log
        reads_the_header_twice()
    assert caplog.text.count(f"CSV delimiter of {str(path)!r}: '|' (sniffed") == 1


def test_a_file_read_with_the_wrong_delimiter_is_refused_with_the_fix(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(_people(50, ";"))
    cfg = build_config({"source": {"path": str(path), "delimiter": ","}, "dataset": "t"})
    fix = r"one column named 'id;a;b;c' .* set source.delimiter to ';'"
    with pytest.raises(ConfigError, match=fix):
        inspect_source(cfg.source)


@pytest.fixture
def iceberg_source(tmp_path) -> tuple[str, object]:
    """An Iceberg table ``src.people`` of 1,000 rows in a SQLite catalog of its own; the
    catalog's URI and the table."""
    import pyarrow as pa
    from pyiceberg.catalog import load_catalog

    uri = f"sqlite:///{tmp_path / 'source-catalog.db'}"
    # (a SQL URI names a catalog called "aepipe"; others are configured for pyiceberg)
    catalog = load_catalog("aepipe", type="sql", uri=uri, warehouse=(tmp_path / "wh").as_uri())
    catalog.create_namespace("src")
    rows = pa.table(
        {
            "id": [f"p{i}" for i in range(1000)],
            "age": pa.array([20 + i % 50 for i in range(1000)], pa.int64()),
            "city": ["abc"[i % 3] for i in range(1000)],
        }
    )
    table = catalog.create_table("src.people", schema=rows.schema)
    table.append(rows)
    return uri, table


def test_an_iceberg_table_is_ingested_and_a_commit_is_seen(iceberg_source, tmp_stores) -> None:
    import pyarrow as pa

    uri, table = iceberg_source
    source = {"path": "src.people", "format": "iceberg", "catalog": uri, "entity_id": "id"}
    cfg = build_config({"source": source, "dataset": "people"})
    assert inspect_source(cfg.source).features == ["age", "city"]
    first = ingest_source(cfg, tmp_stores)
    assert first.rows == 1000 and first.quarantined == 0
    assert ingest_source(cfg, tmp_stores).path == first.path  # same snapshot: same ingest
    more = {"id": ["new1", "new2"], "age": pa.array([1, 2], pa.int64()), "city": ["a", "b"]}
    table.append(pa.table(more, schema=table.schema().as_arrow()))
    grown = ingest_source(cfg, tmp_stores)
    assert grown.rows == 1002 and grown.path != first.path


def test_an_iceberg_table_splits_into_groups_of_its_data_files(iceberg_source, tmp_stores) -> None:
    """Issue 42: with ids, an Iceberg snapshot (or its appended rows) is read in partitions
    of whole data files, about partition_rows rows each, for the task runner; together
    they give the rows one read gives."""
    import pyarrow as pa

    uri, table = iceberg_source
    for k in range(3):  # 3 more commits of 400 rows: 4 data files in all
        more = {
            "id": [f"q{k}-{i}" for i in range(400)],
            "age": pa.array([30 + i % 9 for i in range(400)], pa.int64()),
            "city": ["abc"[i % 3] for i in range(400)],
        }
        table.append(pa.table(more, schema=table.schema().as_arrow()))
    source = {"path": "src.people", "format": "iceberg", "catalog": uri, "entity_id": "id"}
    cfg = build_config({"source": source, "dataset": "people", "partition_rows": 1000})
    reader = get_reader("iceberg")
    plan = reader.plan(cfg.source, cfg.partition_rows)
    assert sorted(len(p.files) - 1 for p in plan.parts) == [1, 1, 2]  # data files a part
    split = ingest_source(cfg, tmp_stores)
    ids = pq.read_table(split.path).column("entity_id").to_pylist()
    assert split.rows == 2200 and len(set(ids)) == 2200
    one = build_config({"source": source, "dataset": "people", "partition_rows": 10**6})
    assert len(reader.plan(one.source, one.partition_rows).parts) == 1
    assert ingest_source(one, tmp_stores).rows == 2200


def test_bad_iceberg_sources_fail_in_one_line(iceberg_source, tmp_path) -> None:
    uri, _ = iceberg_source

    def refused(source: dict) -> str:
        with pytest.raises(ConfigError) as err:
            inspect_source(build_config({"source": source, "dataset": "d"}).source)
        assert "\n" not in str(err.value)
        return str(err.value)

    base = {"format": "iceberg", "catalog": uri}
    assert "does not exist" in refused({**base, "path": "src.nope"})
    assert "namespace.table" in refused({**base, "path": "people"})
    broken = f"postgresql+psycopg2://someone:pw@127.0.0.1:{free_port()}/nothing"
    message = refused({"format": "iceberg", "catalog": broken, "path": "src.people"})
    assert message.startswith("cannot open the Iceberg catalog") and "pw@" not in message


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A real S3-compatible server (moto) with an empty bucket ``landing``; the environment
    that points pyarrow's S3 file system at it, as aepipe's own stores take it."""
    from stores.remote import s3_filesystem
    from tests.services import start_moto, stop

    port = free_port()
    server = start_moto(tmp_path_factory.mktemp("s3"), port)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(
            endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True
        ).create_dir("landing")
        yield s3_filesystem()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(server)


def _hour(start: int, n: int):
    import pyarrow as pa

    return pa.table(
        {
            "id": [f"e{i}" for i in range(start, start + n)],
            "v": [float(i % 17) for i in range(start, start + n)],
            "kind": ["abc"[i % 3] for i in range(start, start + n)],
        }
    )


def test_an_object_store_prefix_of_parquet_files_is_read_and_grows(bucket, tmp_stores) -> None:
    """Issue 42: a prefix that gains a file an hour; each file seen, a new one changes the
    fingerprint, the same listing reuses the ingest."""
    import pyarrow.parquet as pq_

    for hour in range(2):
        with bucket.open_output_stream(f"landing/events/h{hour}.parquet") as out:
            pq_.write_table(_hour(hour * 100, 100), out)
    cfg = build_config(
        {"source": {"path": "s3://landing/events/", "entity_id": "id"}, "dataset": "events"}
    )
    assert cfg.source.resolved_format == "parquet"
    first = ingest_source(cfg, tmp_stores)
    assert first.rows == 200 and first.features == ["v", "kind"]
    assert ingest_source(cfg, tmp_stores).path == first.path
    with bucket.open_output_stream("landing/events/h2.parquet") as out:
        pq_.write_table(_hour(200, 100), out)
    grown = ingest_source(cfg, tmp_stores)
    assert grown.rows == 300 and grown.path != first.path


def test_csv_and_json_lines_objects_are_read_from_the_store(bucket, tmp_stores) -> None:
    text = _people(300, ";").encode()
    with bucket.open_output_stream("landing/people.csv.gz", compression="gzip") as out:
        out.write(text)
    with bucket.open_output_stream("landing/rows.jsonl") as out:
        out.write("\n".join(json.dumps(r) for r in _rows(150)).encode())
    csv_cfg = build_config(
        {"source": {"path": "s3://landing/people.csv.gz", "entity_id": "id"}, "dataset": "p"}
    )
    assert ingest_source(csv_cfg, tmp_stores).rows == 300  # ';' sniffed there too
    json_cfg = build_config({"source": {"path": "s3://landing/rows.jsonl"}, "dataset": "r"})
    assert ingest_source(json_cfg, tmp_stores).rows == 150


def test_an_object_store_prefix_of_csv_files_is_read_past_its_marker(bucket, tmp_stores) -> None:
    """Issue 42: ``s3://bucket/prefix/`` of CSV files, gaining a file an hour: read as one
    table, and past the marker only the new file."""
    for hour in range(2):
        with bucket.open_output_stream(f"landing/people/h{hour}.csv") as out:
            out.write(_people(100, ";").replace("\nr", f"\nh{hour}r").encode())
    cfg = build_config(
        {"source": {"path": "s3://landing/people/", "entity_id": "id"}, "dataset": "pp"}
    )
    assert cfg.source.resolved_format == "csv"
    assert ingest_source(cfg, tmp_stores).rows == 200
    reader = get_reader("csv")
    since = reader.marker(cfg.source)
    time.sleep(1.1)  # an object's time is in whole seconds: one in the same second reads all
    with bucket.open_output_stream("landing/people/h2.csv") as out:
        out.write(_people(100, ";").replace("\nr", "\nh2r").encode())
    plan = reader.plan(cfg.source, 1000, None, since)
    assert [f for p in plan.parts for f in p.files] == ["s3://landing/people/h2.csv"]
    assert ingest_source(cfg, tmp_stores, since).rows == 100


def test_missing_objects_fail_in_one_line(bucket, monkeypatch) -> None:
    with bucket.open_output_stream("landing/docs/notes.md") as out:
        out.write(b"# not data")
    for path, said in [
        ("s3://landing/nothing.csv", "source file 's3://landing/nothing.csv' does not exist"),
        ("s3://landing/none/", "source 's3://landing/none/' does not exist"),
        ("s3://landing/docs/", "and no Parquet files (.parquet, .pq)"),
        ("s3://elsewhere/x.parquet", "source file 's3://elsewhere/x.parquet' does not exist"),
    ]:
        with pytest.raises(ConfigError) as err:
            inspect_source(build_config({"source": {"path": path}, "dataset": "d"}).source)
        assert said in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    src = build_config({"source": {"path": "s3://landing/p.csv"}, "dataset": "d"}).source
    with pytest.raises(ConfigError, match=r"^cannot reach source 's3://landing/p.csv': "):
        inspect_source(src)


def test_a_sql_watermark_reads_only_the_rows_past_it(database, tmp_stores) -> None:
    """Issue 42: with source.watermark, a later read takes the rows past the highest value
    the last one read (bounded by the highest now); without new rows it cannot be made."""
    import sqlalchemy as sa

    from tasks.io.readers.base import IncrementalUnavailable

    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE events (id text, added bigint, v float8)"))
        conn.execute(
            sa.text("INSERT INTO events SELECT 'e' || i, i, i % 7 FROM generate_series(1, 500) i")
        )
    source = {"path": database, "table": "events", "entity_id": "id", "watermark": "added"}
    cfg = build_config({"source": source})
    whole = ingest_source(cfg, tmp_stores)
    assert whole.rows == 500 and whole.marker == "500" and whole.since is None
    with pytest.raises(IncrementalUnavailable, match="no row has added past 500"):
        ingest_source(cfg, tmp_stores, since=whole.marker)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO events VALUES ('late', 501, 1.0), ('later', 502, 2.0)"))
    engine.dispose()
    new = ingest_source(cfg, tmp_stores, since=whole.marker)
    assert (new.rows, new.marker, new.since) == (2, "502", "500")
    assert sorted(pq.read_table(new.path).column("entity_id").to_pylist()) == ["late", "later"]


def test_a_watermark_lookback_finds_rows_committed_late(database, tmp_stores) -> None:
    """Issue 42: a row committed after the last read but stamped before its highest value
    is missed past the watermark; source.watermark_lookback reads that far back again (the
    (id, time) comparison of a scoring run then drops the rows already scored)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE stamped (id text, at timestamptz, v float8)"))
        conn.execute(
            sa.text(
                "INSERT INTO stamped SELECT 'e' || i, timestamptz '2026-01-01' + i * "
                "interval '1 minute', i % 7 FROM generate_series(1, 300) i"
            )
        )
    source = {"path": database, "table": "stamped", "entity_id": "id", "watermark": "at"}
    whole = ingest_source(build_config({"source": source}), tmp_stores)
    with engine.begin() as conn:  # 05:00 read; a row of 04:50 commits late, one of 05:01
        conn.execute(
            sa.text(
                "INSERT INTO stamped VALUES ('late', timestamptz '2026-01-01 04:50', 1), "
                "('next', timestamptz '2026-01-01 05:01', 2)"
            )
        )
    engine.dispose()

    def read_past(**more) -> list[str]:
        cfg = build_config({"source": {**source, **more}})
        new = ingest_source(cfg, tmp_stores, since=whole.marker)
        return sorted(pq.read_table(new.path).column("entity_id").to_pylist())

    assert read_past() == ["next"]
    back = read_past(watermark_lookback="15 minutes")
    assert "late" in back and "next" in back and len(back) == 2 + 15  # 04:45 < at <= 05:00
    assert len(read_past(watermark_lookback="20 minutes")) == 2 + 20
    alone = {**source, "watermark": None, "watermark_lookback": "1"}
    with pytest.raises(ConfigError, match=r"watermark_lookback needs source\.watermark"):
        inspect_source(build_config({"source": alone}).source)


def test_an_iceberg_marker_that_cannot_be_read_past_says_why(iceberg_source) -> None:
    """Issue 42: an expired (or unknown) snapshot, or nothing committed since, cannot be
    read past: the caller reads the whole table and compares, and says why."""
    import pyarrow as pa

    from tasks.io.readers.base import IncrementalUnavailable

    uri, table = iceberg_source
    source = {"path": "src.people", "format": "iceberg", "catalog": uri, "entity_id": "id"}
    src = build_config({"source": source, "dataset": "people"}).source
    reader = get_reader("iceberg")
    now = reader.marker(src)
    with pytest.raises(IncrementalUnavailable, match="has no commit since snapshot"):
        reader.plan(src, 1000, None, now)
    with pytest.raises(IncrementalUnavailable, match="the last one read, has expired"):
        reader.plan(src, 1000, None, "12345")
    more = {"id": ["n1"], "age": pa.array([3], pa.int64()), "city": ["c"]}
    table.append(pa.table(more, schema=table.schema().as_arrow()))
    assert reader.plan(src, 1000, None, now).marker == reader.marker(src) != now


def test_a_sql_source_splits_into_ranges_of_a_column(database, tmp_stores) -> None:
    """Issue 42: source.partition_by splits the read into ranges of a numeric column, each a
    partition the Dask runner can hand to a worker: the same rows as one read, none twice,
    rows where the column is null included (with the last range)."""
    import sqlalchemy as sa

    from tasks.io.readers.sql import part_spec

    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id text, amount numeric(8, 2), n float8)"))
        conn.execute(
            sa.text(
                "INSERT INTO orders SELECT 'o' || i, i * 1.25, CASE WHEN i % 50 = 0 THEN NULL "
                "ELSE i % 97 END FROM generate_series(1, 1000) i"
            )
        )
    engine.dispose()
    source = {"path": database, "table": "orders", "entity_id": "id"}
    whole = ingest_source(build_config({"source": source, "dataset": "o1"}), tmp_stores)
    cfg = build_config(
        {"source": {**source, "partition_by": "n"}, "dataset": "o2", "partition_rows": 300}
    )
    parts = get_reader("sql").plan(cfg.source, cfg.partition_rows).parts
    assert len(parts) == 4 and part_spec(parts[-1])["range"][2] is True
    split = ingest_source(cfg, tmp_stores)
    assert split.rows == whole.rows == 1000 and split.quarantined == 0
    ids = pq.read_table(split.path).column("entity_id").to_pylist()
    assert sorted(ids) == sorted(pq.read_table(whole.path).column("entity_id").to_pylist())
    with pytest.raises(ConfigError, match=r"source\.partition_by needs source\.entity_id"):
        inspect_source(
            build_config(
                {"source": {**source, "entity_id": None, "partition_by": "n"}, "dataset": "o3"}
            ).source
        )


def test_a_parquet_folder_reads_newer_files_unless_older_ones_appeared(tmp_path) -> None:
    """Issue 42: past a folder's marker only newer files are read; a file copied in with an
    older time (cp -p, rsync -t) would never be newer, so the count of files up to the
    marker's time must match, else every file is read (and compared)."""
    import os

    import pyarrow.parquet as pq_

    from tasks.io.readers.base import IncrementalUnavailable

    folder = tmp_path / "landing"
    folder.mkdir()
    for hour in range(2):
        pq_.write_table(_hour(hour * 10, 10), folder / f"h{hour}.parquet")
        os.utime(folder / f"h{hour}.parquet", ns=(10**18 + hour, 10**18 + hour))
    src = build_config({"source": {"path": str(folder), "entity_id": "id"}, "dataset": "l"}).source
    reader = get_reader("parquet")
    since = reader.marker(src)
    assert since == f"{10**18 + 1}/2"
    pq_.write_table(_hour(20, 10), folder / "h2.parquet")  # written now: newer
    plan = reader.plan(src, 1000, None, since)
    assert [os.path.basename(f) for p in plan.parts for f in p.files] == ["h2.parquet"]
    pq_.write_table(_hour(30, 10), folder / "old.parquet")
    os.utime(folder / "old.parquet", ns=(10**18, 10**18))  # copied keeping an older time
    with pytest.raises(IncrementalUnavailable, match="files came with older times, or went"):
        reader.plan(src, 1000, None, since)
