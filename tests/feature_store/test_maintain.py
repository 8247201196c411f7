"""Table upkeep on a real Iceberg catalog: old snapshots expire, unneeded files go, reads
inside the retention window keep working."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from feature_store import (
    FeatureStoreError,
    load_table,
    maintain_table,
    read_features,
    table_history,
)
from tests.feature_store.test_write import data_files, make_batch, write


def test_expired_snapshots_and_their_files_go_reads_in_the_window_stay(tmp_stores) -> None:
    times, sizes = [], [5, 4, 3, 2]
    for n in sizes:  # four replacements of version 1: each leaves the last one's files behind
        write(tmp_stores, make_batch(n, 2, 1), 2, 1)
        times.append(datetime.now(UTC))
        time.sleep(0.05)
    write(tmp_stores, make_batch(6, 2, 2), 2, 2)
    assert len(data_files(tmp_stores)) == 5
    folder = next((tmp_stores.home / "warehouse").rglob("model_version=1"))
    killed = folder / "00000-0-killed-writer.parquet"  # a writer died before its commit
    killed.write_bytes(b"PAR1 not committed")
    os.utime(killed, (time.time() - 3 * 86400,) * 2)
    in_flight = folder / "00000-0-in-flight.parquet"  # a write still going: too young
    in_flight.write_bytes(b"PAR1 staged")
    # as if a week had passed since just after the second write
    now = times[1] + timedelta(days=7, milliseconds=20)
    expected = {t: len(read_features("t", 1, as_of=t, home=tmp_stores)) for t in times[1:]}

    done = maintain_table("t", home=tmp_stores, now=now)

    # snapshots 1 (before the cutoff, not the last such) expired; 2 is what a read as of the
    # cutoff needs; 3, 4 and 5 are inside the window
    assert (done.expired, done.kept) == (1, 4)
    assert done.orphans == 1 and not killed.exists() and in_flight.exists()
    assert done.deleted >= 2  # the killed writer's file and the first write's data file
    assert len(data_files(tmp_stores)) == 5  # v1's 3 kept snapshots' files, v2's, in-flight
    for t, rows in expected.items():
        assert len(read_features("t", 1, as_of=t, home=tmp_stores)) == rows
    assert len(read_features("t", 2, home=tmp_stores)) == 6
    with pytest.raises(FeatureStoreError, match="older ones never existed or were expired"):
        read_features("t", 1, as_of=times[0], home=tmp_stores)
    assert len(table_history("t", tmp_stores)) == 4
    assert "expired 1 commit(s)" in done.to_text()
    again = maintain_table("t", home=tmp_stores, now=now)
    assert (again.expired, again.deleted) == (0, 0)  # nothing left to do
    assert load_table("t", tmp_stores).current_snapshot() is not None


def test_maintaining_with_nothing_old_changes_nothing(tmp_stores) -> None:
    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    write(tmp_stores, make_batch(2, 2, 1), 2, 1)
    before = data_files(tmp_stores)
    done = maintain_table("t", home=tmp_stores)
    assert (done.expired, done.deleted) == (0, 0)
    assert data_files(tmp_stores) == before
    with pytest.raises(ValueError, match="must not be negative"):
        maintain_table("t", retain=timedelta(days=-1), home=tmp_stores)
    with pytest.raises(FeatureStoreError, match="no feature table 'nope'"):
        maintain_table("nope", home=tmp_stores)


def test_the_maintain_features_flow_upkeeps_every_table(prefect_server, home) -> None:
    from flows.maintain_features import maintain_features
    from stores import resolve_stores
    from tasks.config import build_config

    st = resolve_stores(home)
    write(st, make_batch(3, 2, 1), 2, 1)
    write(st, make_batch(2, 2, 1), 2, 1)
    cfg = build_config({"home": str(home), "maintain": {"retain_days": 0, "orphan_age_hours": 0}})
    (done,) = maintain_features(cfg)
    assert (done.table, done.expired, done.kept) == ("t", 1, 1)  # only the current one kept
    assert len(data_files(st)) == 1
    assert len(read_features("t", 1, home=st)) == 2


def test_upkeep_before_any_run_completes_with_nothing_to_do(prefect_server, home) -> None:
    """The daily maintain-features schedule can fire before the first run made a store: the
    run completes (it failed on the missing catalog before) and says so (the message:
    tests/test_serve.py, from a served run's output)."""
    from flows.maintain_features import maintain_features
    from tasks.config import build_config

    assert maintain_features(build_config({"home": str(home)})) == []
    assert not home.exists()  # and made none


def test_upkeep_compacts_a_versions_appended_files_and_keeps_every_row(tmp_stores) -> None:
    """Issue 22.5: each scoring run appends a small file; upkeep rewrites a version's small
    files as one (rows, values and order kept), leaves other versions' alone below the
    count, and a read as of before the compaction still sees the same rows."""
    write(tmp_stores, make_batch(10, 2, 1), 2, 1)
    for i in range(4):
        write(tmp_stores, make_batch(5, 2, 1, start=100 + 10 * i), 2, 1, mode="append")
    write(tmp_stores, make_batch(3, 2, 2), 2, 2)
    before = read_features("t", 1, home=tmp_stores).sort_values("entity_id")
    just_before = datetime.now(UTC)
    time.sleep(0.05)

    done = maintain_table("t", home=tmp_stores)

    assert done.compacted == 5 and "compacted 5 small file(s)" in done.to_text()
    files = [t.file for t in load_table("t", tmp_stores).scan().plan_files()]
    assert sorted(f.partition[1] for f in files) == [1, 2]  # one file per version now
    after = read_features("t", 1, home=tmp_stores).sort_values("entity_id")
    assert after.reset_index(drop=True).equals(before.reset_index(drop=True))
    as_of = read_features("t", 1, as_of=just_before, home=tmp_stores)
    assert len(as_of) == 30 and len(read_features("t", 2, home=tmp_stores)) == 3
    assert table_history("t", tmp_stores)["mode"].iloc[-1] == "compact"
    write(tmp_stores, make_batch(5, 2, 1, start=500), 2, 1, mode="append")  # appends go on
    assert len(read_features("t", 1, home=tmp_stores)) == 35


def test_upkeep_never_deletes_through_a_link_nor_touches_other_tables(tmp_stores, tmp_path) -> None:
    """A symbolic link planted in a table's data folder to another directory: upkeep deletes
    old files of the table, not of the linked directory (before: it deleted them as orphans).
    A table outside aepipe's namespace is refused before anything is compacted or deleted."""
    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    outside = tmp_path / "precious"
    outside.mkdir()
    old = time.time() - 3 * 86400
    for name in ("a.parquet", "b.txt"):
        (outside / name).write_bytes(b"not the table's")
        os.utime(outside / name, (old, old))
    folder = next((tmp_stores.home / "warehouse").rglob("model_version=1"))
    (folder / "link").symlink_to(outside, target_is_directory=True)
    orphan = folder / "00000-0-killed-writer.parquet"
    orphan.write_bytes(b"PAR1 not committed")
    os.utime(orphan, (old, old))

    done = maintain_table("t", home=tmp_stores)

    assert done.orphans == 1 and not orphan.exists()  # the table's own orphan goes
    assert sorted(p.name for p in outside.iterdir()) == ["a.parquet", "b.txt"]
    from feature_store.catalog import get_catalog

    catalog = get_catalog(tmp_stores)
    catalog.create_namespace_if_not_exists("other")
    theirs = load_table("t", tmp_stores).schema()
    catalog.create_table("other.theirs", schema=theirs)
    with pytest.raises(FeatureStoreError, match="not in aepipe's namespace 'aepipe'"):
        maintain_table("other.theirs", home=tmp_stores)


def test_a_model_folder_reached_through_a_link_is_refused_before_any_removal(tmp_path) -> None:
    from tasks.config import ConfigError
    from tasks.registry import download_version

    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    (elsewhere / "7").mkdir(parents=True)
    (elsewhere / "7" / "keep.txt").write_text("someone else's")
    models.mkdir()
    (models / "aepipe-x").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match="reached through a symbolic link"):
        download_version("aepipe-x", 7, models / "aepipe-x" / "7", models)
    assert (elsewhere / "7" / "keep.txt").read_text() == "someone else's"
