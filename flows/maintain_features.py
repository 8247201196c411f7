"""Scheduled upkeep of the feature tables: old snapshots expired, unneeded files deleted."""

from __future__ import annotations

from datetime import timedelta

from prefect import flow

from feature_store import Maintained, list_tables, maintain_table
from feature_store.catalog import store_exists
from stores import Stores
from stores.upkeep import Pruned, maintain_data
from tasks.config import PipelineConfig
from tasks.credentials import run_stores
from tasks.runners import io_task


def maintain_one(table: str, cfg: PipelineConfig, stores: Stores) -> Maintained:
    """Expire ``table``'s snapshots older than ``cfg.maintain.retain_days`` and delete the
    files no kept snapshot needs (orphans once ``orphan_age_hours`` old)."""
    return maintain_table(
        table,
        retain=timedelta(days=cfg.maintain.retain_days),
        orphan_age=timedelta(hours=cfg.maintain.orphan_age_hours),
        home=stores,
        compact_at=cfg.maintain.compact_files,
    )


maintain_task = io_task("maintain-table")(maintain_one)


def maintain_files(cfg: PipelineConfig, stores: Stores, datasets: list[str] | None) -> Pruned:
    """Expire the data store's files no run needs any more (:mod:`stores.upkeep`), with the
    tables' retention settings."""
    return maintain_data(
        stores,
        retain=timedelta(days=cfg.maintain.retain_days),
        orphan_age=timedelta(hours=cfg.maintain.orphan_age_hours),
        datasets=datasets,
    )


maintain_data_task = io_task("maintain-data")(maintain_files)


@flow(name="maintain-features", log_prints=True)
def maintain_features(
    config: PipelineConfig | None = None, tables: list[str] | None = None
) -> list[Maintained]:
    """Maintain ``tables`` (default: every feature table in the store), one task each."""
    cfg = config or PipelineConfig()
    stores = run_stores(cfg)
    if tables is None and not store_exists(stores):  # upkeep scheduled before a first run
        print(f"no feature store under {stores.home} yet: nothing to maintain")
        return []
    names = tables if tables is not None else list_tables(stores)
    done = [maintain_task(name, cfg, stores) for name in names]
    for result in done:
        print(result.to_text())
    if not names:
        print(f"no feature tables under {stores.home}: nothing to maintain")
    print(maintain_data_task(cfg, stores, tables).to_text())  # and the data store's files
    return done
