"""Feature tables on a real Iceberg SQL catalog: schema checks, versions, idempotent writes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store import (
    FeatureStoreError,
    feature_schema,
    list_tables,
    load_table,
    read_features,
    table_history,
    write_features,
)
from feature_store import write as store
from feature_store.catalog import commit_as_of, commits
from feature_store.write import commit_features, stage_features


def make_batch(
    n: int, code_size: int, version: int, start: int = 0, when: datetime | None = None
) -> pa.Table:
    now = when or datetime.now(UTC)
    rng = np.random.default_rng(version)
    cols: dict[str, pa.Array] = {
        "entity_id": pa.array([str(i) for i in range(start, start + n)]),
        "event_timestamp": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }
    for j in range(code_size):
        cols[f"z_{j}"] = pa.array(rng.normal(size=n).astype(np.float32))
    cols.update(
        recon_error=pa.array(rng.random(n).astype(np.float32)),
        anomaly_score=pa.array(rng.random(n).astype(np.float32)),
        is_anomaly=pa.array([False] * n),
        top_columns=pa.array([["a", "b"]] * n, pa.list_(pa.string())),
        model_name=pa.array(["m"] * n),
        model_version=pa.array([version] * n, pa.int64()),
        run_id=pa.array(["run"] * n),
        scored_at=pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    )
    return pa.Table.from_pydict(cols, schema=feature_schema(code_size))


def write(stores, table, code_size: int, version: int, mode: str = "replace") -> int:
    return write_features(
        "t",
        table,
        code_size=code_size,
        model_name="m",
        model_version=version,
        stores=stores,
        mode=mode,
    )


def data_files(stores) -> set[str]:
    return {str(p) for p in (stores.home / "warehouse").rglob("*.parquet")}


def test_write_and_read_versions(tmp_stores) -> None:
    assert write(tmp_stores, make_batch(5, 3, 1), 3, 1) == 5
    assert write(tmp_stores, make_batch(7, 3, 2), 3, 2) == 7
    assert list_tables(tmp_stores) == ["t"]
    v1 = read_features("t", 1, home=tmp_stores)
    v2 = read_features("t", "2", home=tmp_stores)
    both = read_features("t", None, home=tmp_stores)
    assert len(v1) == 5 and len(v2) == 7 and len(both) == 12
    assert set(v1["model_version"]) == {1}
    assert v1["z_0"].dtype == np.float32


def test_only_repeating_text_is_dictionary_encoded(tmp_stores) -> None:
    """Codes, scores and ids are written plain (a dictionary of floats or unique ids is built
    only to be dropped); the model name, run id and explanation names get a dictionary."""
    write(tmp_stores, make_batch(2000, 3, 1), 3, 1)
    (path,) = data_files(tmp_stores)
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {
        group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)
    }
    dictionary = {c for c, e in encodings.items() if "RLE_DICTIONARY" in e}
    assert dictionary == {"model_name", "run_id", "top_columns.list.element"}


def test_rewriting_a_version_replaces_it(tmp_stores) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    write(tmp_stores, make_batch(4, 3, 1), 3, 1)
    got = read_features("t", 1, home=tmp_stores)
    assert len(got) == 4 and not got["entity_id"].duplicated().any()


def test_versions_with_another_code_size_share_the_table(tmp_stores) -> None:
    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    write(tmp_stores, make_batch(3, 4, 2), 4, 2)
    v1 = read_features("t", 1, home=tmp_stores)
    v2 = read_features("t", 2, home=tmp_stores)
    assert [c for c in v1.columns if c.startswith("z_")] == ["z_0", "z_1"]
    assert [c for c in v2.columns if c.startswith("z_")] == ["z_0", "z_1", "z_2", "z_3"]


def test_each_write_is_one_snapshot_partitioned_by_version(tmp_stores) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    tbl = load_table("t", tmp_stores)
    first = tbl.current_snapshot().snapshot_id
    write(tmp_stores, make_batch(5, 3, 2), 3, 2)
    tbl = load_table("t", tmp_stores)
    assert tbl.current_snapshot().parent_snapshot_id == first
    assert [f.name for f in tbl.spec().fields] == ["model_name", "model_version"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["recon_error"]), "lacks column 'recon_error'"),
        (
            lambda t: t.set_column(2, "z_0", pa.array([np.nan] * 3, pa.float32())),
            "'z_0' holds NaN",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("model_version"),
                "model_version",
                pa.array([9] * 3, pa.int64()),
            ),
            "holds \\[9\\], expected only 1",
        ),
    ],
)
def test_invalid_batches_are_refused_before_writing(tmp_stores, mutate, message) -> None:
    with pytest.raises(ValueError, match=message):
        write(tmp_stores, mutate(make_batch(3, 2, 1)), 2, 1)
    assert not (tmp_stores.home / "catalog.db").exists()


def test_reading_what_is_not_there(tmp_stores) -> None:
    with pytest.raises(FeatureStoreError, match="no feature store at"):
        read_features("t", 1, home=tmp_stores)
    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    with pytest.raises(FeatureStoreError, match=r"no feature table 'x'; tables: \['t'\]"):
        read_features("x", 1, home=tmp_stores)
    with pytest.raises(FeatureStoreError, match="no rows for model version 5"):
        read_features("t", 5, home=tmp_stores)


def test_replacing_a_version_is_one_commit_of_whole_files(tmp_stores) -> None:
    """A replacement deletes the version's files and adds the new ones in one transaction:
    two snapshots (pyiceberg's public delete and add_files) made visible by one catalog
    update; history and time travel see one commit."""
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    write(tmp_stores, make_batch(6, 3, 2), 3, 2)
    tbl = load_table("t", tmp_stores)
    before, updates = tbl.current_snapshot().snapshot_id, len(tbl.metadata.metadata_log)
    write(tmp_stores, make_batch(4, 3, 1), 3, 1)
    tbl = load_table("t", tmp_stores)
    assert len(tbl.metadata.metadata_log) == updates + 1  # one catalog update
    delete, add = commits(tbl)[-1]
    assert delete.parent_snapshot_id == before and add.parent_snapshot_id == delete.snapshot_id
    assert delete.summary.operation.value == "delete" and delete.summary["deleted-records"] == "5"
    assert delete.summary.get("deleted-data-files") == "1"  # the whole file, not rewritten
    assert add.summary["added-records"] == "4" and add.summary["total-records"] == "10"
    history = table_history("t", tmp_stores)
    assert list(history["operation"]) == ["append", "append", "overwrite"]
    assert history["snapshot_id"].iloc[-1] == add.snapshot_id
    assert len(read_features("t", 2, home=tmp_stores)) == 6
    assert len(read_features("t", 1, home=tmp_stores)) == 4
    # just before the add landed, the commit had not: the delete alone is never seen
    assert commit_as_of(tbl, add.timestamp_ms - 1)[-1].snapshot_id == before
    assert commit_as_of(tbl, add.timestamp_ms)[-1].snapshot_id == add.snapshot_id


def test_append_adds_rows_and_an_empty_append_commits_nothing(tmp_stores) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    assert write(tmp_stores, make_batch(3, 3, 1, start=5), 3, 1, mode="append") == 3
    snap = load_table("t", tmp_stores).current_snapshot().snapshot_id
    assert write(tmp_stores, iter([]), 3, 1, mode="append") == 0
    assert load_table("t", tmp_stores).current_snapshot().snapshot_id == snap
    got = read_features("t", 1, home=tmp_stores)
    assert sorted(got["entity_id"], key=int) == [str(i) for i in range(8)]


def test_batches_stream_into_several_files_in_one_commit(tmp_stores, monkeypatch) -> None:
    monkeypatch.setattr(store, "ROW_GROUP_BYTES", 1000)
    monkeypatch.setattr(store, "FILE_BYTES", 5000)
    batches = (make_batch(50, 3, 1, start=50 * i) for i in range(6))
    assert write(tmp_stores, batches, 3, 1) == 300
    tbl = load_table("t", tmp_stores)
    assert len(tbl.history()) == 1
    files = [t.file for t in tbl.scan().plan_files()]
    assert len(files) >= 2 and sum(f.record_count for f in files) == 300
    meta = pq.ParquetFile(files[0].file_path.removeprefix("file://")).metadata
    assert meta.num_row_groups >= 2  # rows were appended to the open file, group by group
    assert read_features("t", 1, home=tmp_stores)["entity_id"].nunique() == 300


def test_a_failure_mid_stream_leaves_the_table_and_warehouse_as_they_were(
    tmp_stores, monkeypatch
) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    files = data_files(tmp_stores)
    snap = load_table("t", tmp_stores).current_snapshot().snapshot_id
    monkeypatch.setattr(store, "ROW_GROUP_BYTES", 1000)

    def broken():
        yield make_batch(50, 3, 1)
        yield make_batch(50, 3, 1, start=50)
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        write(tmp_stores, broken(), 3, 1)
    assert load_table("t", tmp_stores).current_snapshot().snapshot_id == snap
    assert data_files(tmp_stores) == files
    assert len(read_features("t", 1, home=tmp_stores)) == 5


def test_as_of_reads_the_table_as_it_was(tmp_stores) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    first = load_table("t", tmp_stores).current_snapshot()
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    write(tmp_stores, make_batch(2, 3, 1), 3, 1)
    assert len(read_features("t", 1, home=tmp_stores)) == 2
    assert len(read_features("t", 1, as_of=between, home=tmp_stores)) == 5
    naive = between.astimezone(UTC).replace(tzinfo=None).isoformat()
    assert len(read_features("t", 1, as_of=naive, home=tmp_stores)) == 5
    assert len(read_features("t", 1, as_of=first.snapshot_id, home=tmp_stores)) == 5
    with pytest.raises(FeatureStoreError, match="has no snapshot at or before"):
        read_features("t", 1, as_of=datetime(2000, 1, 1, tzinfo=UTC), home=tmp_stores)
    with pytest.raises(FeatureStoreError, match="no snapshot 12345"):
        read_features("t", 1, as_of=12345, home=tmp_stores)
    history = table_history("t", tmp_stores)
    assert list(history["operation"]) == ["append", "overwrite"]
    assert list(history["rows"]) == ["5", "2"]


def test_columns_and_filters(tmp_stores) -> None:
    batch = make_batch(10, 2, 1)
    errors = pa.array(np.arange(10, dtype=np.float32) / 10)
    write(tmp_stores, batch.set_column(4, "recon_error", errors), 2, 1)
    got = read_features(
        "t", 1, columns=["entity_id", "recon_error"], filter="recon_error >= 0.5", home=tmp_stores
    )
    assert list(got.columns) == ["entity_id", "recon_error"]
    assert sorted(got["entity_id"], key=int) == ["5", "6", "7", "8", "9"]
    with pytest.raises(FeatureStoreError, match="no column"):
        read_features("t", 1, columns=["nope"], home=tmp_stores)
    with pytest.raises(FeatureStoreError, match="cannot parse filter"):
        read_features("t", 1, filter="recon_error >>> 1", home=tmp_stores)


def _append_worker(home: str, worker: int, rounds: int) -> None:
    from stores import resolve_stores

    for r in range(rounds):
        write(
            resolve_stores(home),
            make_batch(100, 2, 1, start=(worker * rounds + r) * 100),
            2,
            1,
            "append",
        )


def _replace_worker(home: str, version: int) -> None:
    from stores import resolve_stores

    for _ in range(3):
        write(resolve_stores(home), make_batch(100, 2, version), 2, version)


def _run_all(targets: list[tuple]) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=f, args=args) for f, args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_concurrent_writers_all_land(tmp_stores) -> None:
    write(tmp_stores, make_batch(1, 2, 1, start=10**6), 2, 1)  # the table exists first
    home = str(tmp_stores.home)
    _run_all(
        [
            (_append_worker, (home, 0, 4)),
            (_append_worker, (home, 1, 4)),
            (_replace_worker, (home, 2)),
            (_replace_worker, (home, 3)),
        ]
    )
    appended = read_features("t", 1, home=tmp_stores)
    assert len(appended) == 801 and appended["entity_id"].is_unique
    assert len(read_features("t", 2, home=tmp_stores)) == 100
    assert len(read_features("t", 3, home=tmp_stores)) == 100


def test_duckdb_and_polars_read_a_versions_files_directly(tmp_stores) -> None:
    import duckdb
    import polars as pl

    from feature_store import data_files

    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    write(tmp_stores, make_batch(7, 3, 2), 3, 2)
    write(tmp_stores, make_batch(4, 3, 1), 3, 1)  # the replaced files stay for time travel
    files = data_files("t", 1, home=tmp_stores)
    assert len(data_files("t", None, home=tmp_stores)) == 2 and len(files) == 1
    counts = duckdb.sql(
        f"select model_version, count(*) from read_parquet({files}) group by 1"
    ).fetchall()
    assert counts == [(1, 4)]
    frame = pl.read_parquet(files)
    assert frame.height == 4 and frame.schema["z_0"] == pl.Float32
    assert (
        len(
            data_files(
                "t", 1, as_of=load_table("t", tmp_stores).history()[0].snapshot_id, home=tmp_stores
            )
        )
        == 1
    )


def test_a_table_from_an_older_aepipe_is_widened_with_the_new_columns(tmp_stores) -> None:
    from feature_store.catalog import get_catalog, table_identifier

    write(tmp_stores, make_batch(4, 2, 1), 2, 1)
    tbl = get_catalog(tmp_stores).load_table(table_identifier("t"))
    with tbl.update_schema() as update:  # the schema before anomaly_score / top_columns
        update.delete_column("anomaly_score")
        update.delete_column("top_columns")
    assert "anomaly_score" not in tbl.refresh().schema().as_arrow().names
    assert write(tmp_stores, make_batch(3, 2, 2), 2, 2) == 3
    both = read_features("t", None, home=tmp_stores.home).sort_values("model_version")
    assert {"anomaly_score", "top_columns"} <= set(both.columns)
    old, new = both[both["model_version"] == 1], both[both["model_version"] == 2]
    assert old["anomaly_score"].isna().all() and old["top_columns"].isna().all()
    assert new["anomaly_score"].notna().all() and list(new["top_columns"].iloc[0]) == ["a", "b"]


def test_aliases_are_recorded_with_the_commit_and_resolved_by_reads(tmp_stores) -> None:
    """A table records its model's aliases at each commit: "champion" follows the rows that
    landed, with no registry in sight; a resolver, when given, is asked instead."""
    from feature_store import commit_features, record_aliases, stage_features

    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    with pytest.raises(FeatureStoreError, match="records no version with alias 'champion'"):
        read_features("t", home=tmp_stores)
    staged = stage_features(
        "t", make_batch(4, 2, 2), code_size=2, model_name="m", model_version=2, stores=tmp_stores
    )
    commit_features(
        [staged],
        model_name="m",
        model_version=2,
        stores=tmp_stores,
        aliases={"champion": 2, "challenger": 1},
    )
    assert set(read_features("t", home=tmp_stores)["model_version"]) == {2}
    assert set(read_features("t", "challenger", home=tmp_stores)["model_version"]) == {1}
    asked = []

    def resolve(model_name: str, alias: str) -> int:
        asked.append((model_name, alias))
        return 1

    assert set(read_features("t", home=tmp_stores, resolve=resolve)["model_version"]) == {1}
    assert asked == [("m", "champion")]
    # an alias moved without a write (a manual promotion); a stale alias is dropped
    assert record_aliases("m", {"champion": 1}, tmp_stores) == ["t"]
    assert set(read_features("t", home=tmp_stores)["model_version"]) == {1}
    with pytest.raises(FeatureStoreError, match="alias 'challenger'"):
        read_features("t", "challenger", home=tmp_stores)
    assert record_aliases("other-model", {"champion": 9}, tmp_stores) == []


def test_as_of_resolves_aliases_as_they_were_then(tmp_stores) -> None:
    """The table logs each change of its aliases with the time: a read as of a moment names
    the version that was champion at that moment, not the one that is now."""
    from feature_store import commit_features, record_aliases, stage_features

    def land(version: int, aliases: dict[str, int]) -> None:
        staged = stage_features(
            "t",
            make_batch(3, 2, version),
            code_size=2,
            model_name="m",
            model_version=version,
            stores=tmp_stores,
        )
        commit_features(
            [staged], model_name="m", model_version=version, stores=tmp_stores, aliases=aliases
        )
        time.sleep(0.02)

    land(1, {"champion": 1})
    first = load_table("t", tmp_stores).current_snapshot().snapshot_id
    during_v1 = datetime.now(UTC)
    time.sleep(0.02)
    land(2, {"champion": 2, "challenger": 1})
    during_v2 = datetime.now(UTC)
    time.sleep(0.02)
    record_aliases("m", {"champion": 1}, tmp_stores)  # rolled back by hand, no write

    def champion(**kw) -> set[int]:
        return set(read_features("t", home=tmp_stores, **kw)["model_version"])

    assert champion() == {1}
    assert champion(as_of=during_v1) == {1}
    assert champion(as_of=during_v2) == {2}
    assert champion(as_of=first) == {1}
    with pytest.raises(FeatureStoreError, match="records no version with alias 'challenger' at"):
        read_features("t", "challenger", as_of=during_v1, home=tmp_stores)
    assert set(
        read_features("t", "challenger", as_of=during_v2, home=tmp_stores)["model_version"]
    ) == {1}


def _hold_catalog(stores, seconds: float, held: threading.Event) -> None:
    """Another writer on the catalog's SQLite database: its write lock for ``seconds``."""
    db = stores.catalog_uri.removeprefix("sqlite:///")
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def _staged(stores, n: int = 100):
    return stage_features(
        "t", make_batch(n, 2, 1), code_size=2, model_name="m", model_version=1, stores=stores
    )


def test_a_commit_waits_for_a_locked_catalog_and_lands_once(tmp_stores) -> None:
    """Issue 22.2: another writer holds the catalog database's lock past SQLite's 5 s busy
    timeout: the commit waits and lands once (it failed with "database is locked" before)."""
    staged = _staged(tmp_stores)
    held = threading.Event()
    holder = threading.Thread(target=_hold_catalog, args=(tmp_stores, 7.0, held))
    holder.start()
    held.wait()
    start = time.monotonic()
    rows = commit_features([staged], model_name="m", model_version=1, stores=tmp_stores)
    holder.join()
    assert rows == 100 and time.monotonic() - start >= 6.5
    frame = read_features("t", 1, home=tmp_stores)
    assert len(frame) == 100 and frame["entity_id"].is_unique
    assert len(load_table("t", tmp_stores).snapshots()) == 1


def _broken_connection() -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


def test_a_commit_that_landed_before_its_connection_broke_is_not_made_twice(
    tmp_stores, monkeypatch
) -> None:
    """The catalog takes the commit, then the connection breaks before the answer comes
    back: the retry finds the snapshot by its commit id and stops (a second commit would
    make a second snapshot)."""
    staged = _staged(tmp_stores)
    real, calls = store._commit_once, []

    def lands_then_breaks(*args) -> None:
        calls.append(1)
        real(*args)
        if len(calls) == 1:
            raise _broken_connection()

    monkeypatch.setattr(store, "_commit_once", lands_then_breaks)
    rows = commit_features([staged], model_name="m", model_version=1, stores=tmp_stores)
    assert rows == 100 and calls == [1]
    assert len(load_table("t", tmp_stores).snapshots()) == 1
    assert len(read_features("t", 1, home=tmp_stores)) == 100


def test_a_catalog_that_never_answers_again_keeps_the_files(tmp_stores, monkeypatch) -> None:
    """The connection breaks and the catalog stays gone past the wait: the commit may have
    landed, so it says so in one line (CommitStateUnknown) and keeps the staged data files
    (deleting them could break a landed snapshot)."""
    monkeypatch.setattr(store, "CATALOG_WAIT_S", 0.5)
    staged = _staged(tmp_stores)
    files = data_files(tmp_stores)
    assert files

    def gone(*args) -> None:
        raise _broken_connection()

    monkeypatch.setattr(store, "_commit_once", gone)
    with pytest.raises(store.CommitStateUnknown) as err:
        commit_features([staged], model_name="m", model_version=1, stores=tmp_stores)
    message = str(err.value)
    assert "did not answer for 0 s" in message and "may have landed" in message
    assert "server closed the connection" in message and "\n" not in message
    assert data_files(tmp_stores) == files  # kept


def test_a_catalog_locked_past_the_wait_is_one_line_and_keeps_nothing(
    tmp_stores, monkeypatch
) -> None:
    monkeypatch.setattr(store, "CATALOG_WAIT_S", 1.0)
    staged = _staged(tmp_stores)
    held = threading.Event()
    holder = threading.Thread(target=_hold_catalog, args=(tmp_stores, 8.0, held))
    holder.start()
    held.wait()
    with pytest.raises(FeatureStoreError) as err:
        commit_features([staged], model_name="m", model_version=1, stores=tmp_stores)
    holder.join()
    message = str(err.value)
    assert "stayed locked by another writer for 1 s" in message and "\n" not in message
    assert message.endswith("nothing was written")
    assert data_files(tmp_stores) == set()  # the staged files were deleted
    assert load_table("t", tmp_stores).current_snapshot() is None
