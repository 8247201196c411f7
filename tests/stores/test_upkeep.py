"""Bounded disk (issue 40.2): what a run prunes once its commit landed, and what upkeep
expires from the data store, on a home's folder (the S3 case runs the same planting in
tests/remote/test_remote_stores.py)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from stores import Stores, resolve_stores
from stores import data as data_store
from stores.upkeep import maintain_data, prune_ingests

DAY = 86_400
OLD_INGEST, NEW_INGEST, LEASED = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"


def _file(path: Path, size: int, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def plant(stores: Stores) -> dict[str, Path]:
    """A data store as a year of hourly runs leaves it: two ingests of a data set (the older
    one 2 days old, one still leased by a running training), staged parts and row positions
    of killed runs, an idle checkpoint, a trained model's folder, a registered version's
    folder, the scoring note and a cached result; every file published."""
    data, models = stores.data_dir / "sales", stores.models_dir
    paths = {
        "old ingest": _file(data / OLD_INGEST / "raw.parquet", 3000, 2 * DAY).parent,
        "newest ingest": _file(data / NEW_INGEST / "raw.parquet", 2000, 60).parent,
        "leased ingest": _file(data / LEASED / "normalized.parquet", 1000, 3 * DAY).parent,
        "old parts": _file(data / NEW_INGEST / "parts-0a1b2c3d4e5f" / "p0.parquet", 10, DAY * 2),
        "young parts": _file(data / NEW_INGEST / "parts-9a8b7c6d5e4f" / "p0.parquet", 10, 60),
        "old positions": _file(data / "scoring" / "rows-old.npy", 10, 2 * DAY),
        "note": _file(data / "last-score.json", 10, 5 * DAY),
        "idle checkpoint": _file(models / "sales" / "checkpoints" / "k1" / "last.pt", 10, 2 * DAY),
        "trained run": _file(models / "sales" / "20261101T101010-0a1b2c3d" / "w.pt", 10, 9 * DAY),
        "young run": _file(models / "sales" / "20261206T101010-0a1b2c3d" / "w.pt", 10, DAY),
        "registered": _file(models / "aepipe-sales" / "1" / "weights.pt", 10, 30 * DAY).parent,
        "old result": _file(stores.data_root / "results" / "aepipe-ingest-x", 10, 9 * DAY),
    }
    _file(data / LEASED / ".lease-run-still-training", 30, 3600)  # taken an hour ago
    paths["old parts"] = paths["old parts"].parent
    paths["young parts"] = paths["young parts"].parent
    paths["idle checkpoint"] = paths["idle checkpoint"].parent
    paths["trained run"] = paths["trained run"].parent
    paths["young run"] = paths["young run"].parent
    for kind in ("data", "models", "results"):
        data_store.publish(stores, stores.data_root / kind)
    return paths


def held(stores: Stores, path: Path) -> bool:
    """Whether this home or the object store still holds ``path``."""
    return path.exists() or data_store.published(stores, path)


def check_upkeep(stores: Stores) -> None:
    """The planted store through a scoring run's pruning, then upkeep: what goes, what stays."""
    paths = plant(stores)
    # a scoring run whose commit landed on the newest ingest: the old one goes, the leased
    # one (a training still reading it) stays; nothing else is touched
    pruned = prune_ingests(
        stores, "sales", paths["newest ingest"] / "raw.parquet", orphan_age_hours=24
    )
    assert pruned.removed == {"superseded ingest(s)": 1} and pruned.freed_bytes == 3000
    assert "removed 1 superseded ingest(s), 0.0 MB" in pruned.note()
    assert not held(stores, paths["old ingest"])
    assert held(stores, paths["leased ingest"]) and held(stores, paths["newest ingest"])
    assert held(stores, paths["note"]) and held(stores, paths["old parts"])

    done = maintain_data(stores, retain=timedelta(days=7), orphan_age=timedelta(hours=24))
    assert done.removed == {
        "cached result(s)": 1,
        "checkpoint(s)": 1,
        "row-position file(s)": 1,
        "staged part folder(s)": 1,
        "trained-model folder(s)": 1,
    }
    gone = ["old parts", "old positions", "idle checkpoint", "trained run", "old result"]
    kept = ["newest ingest", "leased ingest", "young parts", "note", "young run", "registered"]
    assert [k for k in gone if held(stores, paths[k])] == []
    assert [k for k in kept if not held(stores, paths[k])] == []
    # a lease older than orphan_age belongs to a run that died: its ingest goes
    lease = paths["leased ingest"] / ".lease-run-still-training"
    stamp = time.time() - 2 * DAY
    os.utime(lease, (stamp, stamp))
    data_store.publish(stores, lease)
    again = maintain_data(stores, retain=timedelta(days=7), orphan_age=timedelta(hours=1))
    assert again.removed == {"superseded ingest(s)": 1}
    assert not held(stores, paths["leased ingest"]) and held(stores, paths["newest ingest"])


def check_remote_upkeep(writer: Stores, empty: Stores) -> None:
    """With ``AEPIPE_DATA`` on an object store: a run prunes there too, and upkeep from a home
    that holds nothing (``empty``) expires what only the object store holds. The store's
    own times are its upload times (now), so only what is older than 0 s is old here."""
    paths = plant(writer)
    # the newest ingest uploaded last, as the run that wrote it would: uploads in one go can
    # straddle a second, and the store's whole-second times then made the leased ingest the
    # newest by upload (under load, the test failed once that way)
    data_store.publish(writer, paths["newest ingest"] / "raw.parquet")
    pruned = prune_ingests(
        empty, "sales", empty.data_dir / "sales" / NEW_INGEST / "raw.parquet", orphan_age_hours=24
    )
    assert pruned.removed == {"superseded ingest(s)": 1}
    assert not data_store.published(writer, paths["old ingest"])
    assert data_store.published(writer, paths["leased ingest"])  # a training still reads it
    done = maintain_data(empty, retain=timedelta(0), orphan_age=timedelta(hours=1))
    assert done.removed == {"cached result(s)": 1, "trained-model folder(s)": 2}
    for kind in ("trained run", "young run", "old result"):
        assert not data_store.published(writer, paths[kind]), kind
    for kind in ("newest ingest", "leased ingest", "registered", "note", "old parts"):
        assert data_store.published(writer, paths[kind]), kind
    assert not empty.data_dir.exists()  # nothing fetched to find out


def test_runs_prune_superseded_ingests_and_upkeep_expires_what_no_run_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AEPIPE_DATA", raising=False)
    check_upkeep(resolve_stores(tmp_path / "home"))


def test_upkeep_of_one_data_set_leaves_the_others(tmp_path: Path) -> None:
    stores = resolve_stores(tmp_path / "home")
    plant(stores)
    other = _file(stores.data_dir / "orders" / OLD_INGEST / "raw.parquet", 10, 9 * DAY)
    _file(stores.data_dir / "orders" / NEW_INGEST / "raw.parquet", 10, 60)
    done = maintain_data(stores, timedelta(days=7), timedelta(hours=24), datasets=["orders"])
    assert done.removed == {"superseded ingest(s)": 1} and not other.exists()
    assert (stores.data_dir / "sales" / OLD_INGEST).exists()  # another data set's: kept
    assert (stores.data_root / "results" / "aepipe-ingest-x").exists()  # shared: kept


def test_a_run_lets_go_of_its_lease_however_it_ends(tmp_path: Path) -> None:
    from stores.upkeep import leased, take_lease

    stores = resolve_stores(tmp_path / "home")
    folder = stores.data_dir / "sales" / NEW_INGEST
    with pytest.raises(RuntimeError, match="the run failed"), leased(stores, "sales", "run-1"):
        take_lease(stores, folder, "run-1")
        take_lease(stores, folder, "run-2")  # another run's, on the same ingest
        assert (folder / ".lease-run-1").exists()
        raise RuntimeError("the run failed")
    assert sorted(p.name for p in folder.iterdir()) == [".lease-run-2"]
    take_lease(stores, folder, None)  # outside a flow run: nothing to hold
    assert sorted(p.name for p in folder.iterdir()) == [".lease-run-2"]
    # a run whose ingest failed (no room, say) leaves no folder behind for its lease
    with pytest.raises(OSError, match="no room"), leased(stores, "orders", "run-3"):
        take_lease(stores, stores.data_dir / "orders" / OLD_INGEST, "run-3")
        raise OSError("no room")
    assert not (stores.data_dir / "orders").exists()


def test_a_lease_that_cannot_be_written_does_not_fail_the_run(tmp_path: Path, caplog) -> None:
    """A full or broken disk: the ingest's own room check reports it; the lease only warns."""
    from stores.upkeep import take_lease

    stores = resolve_stores(tmp_path / "home")
    blocker = _file(stores.data_dir / "sales", 1)  # a file where the data set's folder goes
    take_lease(stores, blocker / NEW_INGEST, "run-1")
    assert "could not take a lease" in caplog.text
