"""Reading feature tables: one model version's rows (now or as of a time or snapshot), its
data files for other engines, and the table's commit history.

A version is a number, or an alias such as ``"champion"``: resolved by the ``resolve``
callable when one is given (``tasks.registry.alias_resolver`` asks the MLflow registry), else
from the aliases the table recorded at its last commit. This package never talks to MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ae_models.vocabulary import (
    ENTITY_KEY,
    EVENT_TIMESTAMP,
    LATENT_PREFIX,
    MODEL_VERSION,
    SCORED_AT,
)
from feature_store.catalog import (
    MODEL_NAME_PROPERTY,
    FeatureStoreError,
    alias_log,
    aliases_at,
    as_stores,
    commit_as_of,
    commits,
    load_table,
    recorded_aliases,
)
from stores import Stores

if TYPE_CHECKING:
    import pandas as pd
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table

Resolver = Callable[[str, str], int]  # (registered model name, alias) -> version number


AsOf = datetime | str | int


def _as_of_snapshot(tbl: Table, table: str, as_of: AsOf) -> tuple[int, int]:
    """The snapshot id current at ``as_of`` and that moment in epoch milliseconds: ``as_of`` is
    a time (aware, or naive meaning UTC; ISO text works) or a snapshot id (its commit time)."""
    if isinstance(as_of, int) and not isinstance(as_of, bool):
        snap = tbl.snapshot_by_id(as_of)
        if snap is None:
            raise FeatureStoreError(f"table {table!r} has no snapshot {as_of}")
        return as_of, snap.timestamp_ms
    when = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    at_ms = int(when.timestamp() * 1000)
    landed = commit_as_of(tbl, at_ms)
    if landed is None:
        history = tbl.history()
        first = (
            datetime.fromtimestamp(history[0].timestamp_ms / 1000, UTC).isoformat()
            if history
            else "none yet"
        )
        raise FeatureStoreError(
            f"table {table!r} has no snapshot at or before {when.isoformat()} (its oldest "
            f"kept snapshot: {first}; older ones never existed or were expired by upkeep)"
        )
    return landed[-1].snapshot_id, at_ms


def _version_slice(
    tbl: Table,
    table: str,
    model_version: str | int | None,
    as_of: AsOf | None,
    resolve: Resolver | None,
) -> tuple[Any, int | None]:
    """The row filter of a version's rows (every row for None) and the snapshot to read
    (None: the current one); an alias read ``as_of`` resolves as it was then."""
    from pyiceberg.expressions import AlwaysTrue, EqualTo

    snapshot_id = at_ms = None
    if as_of is not None:
        snapshot_id, at_ms = _as_of_snapshot(tbl, table, as_of)
    if model_version is None:
        return AlwaysTrue(), snapshot_id
    number = version_number(tbl, table, model_version, resolve, at_ms)
    return EqualTo(MODEL_VERSION, number), snapshot_id


def table_history(table: str, home: str | os.PathLike[str] | Stores | None = None) -> pd.DataFrame:
    """One row per commit of a feature table: time, snapshot id, operation, model version and
    rows written; the times and ids are what ``as_of`` takes."""
    import pandas as pd

    tbl = load_table(table, as_stores(home))
    rows = []
    for commit in commits(tbl):
        snap = commit[-1]  # a replacement's delete and add: one commit, its last snapshot
        summary = snap.summary
        extra = summary.additional_properties if summary is not None else {}
        operation = str(summary.operation.value) if summary is not None else None
        rows.append(
            {
                "committed_at": datetime.fromtimestamp(snap.timestamp_ms / 1000, UTC),
                "snapshot_id": snap.snapshot_id,
                "operation": "overwrite" if len(commit) > 1 else operation,
                "model_version": extra.get("aepipe.model_version"),
                "mode": extra.get("aepipe.mode"),
                "rows": extra.get("aepipe.rows"),
                "total_rows": extra.get("total-records"),
            }
        )
    return pd.DataFrame(rows)


def read_features_arrow(
    table: str,
    model_version: str | int | None = "champion",
    *,
    as_of: AsOf | None = None,
    columns: list[str] | None = None,
    filter: str | BooleanExpression | None = None,
    latest: bool = False,
    home: str | os.PathLike[str] | Stores | None = None,
    resolve: Resolver | None = None,
) -> pa.Table:
    """Arrow table of a feature table's rows for one model version.

    ``model_version`` is a version number, an alias such as ``"champion"`` (resolved by
    ``resolve``, or as the table recorded it at its last commit), or ``None`` for every
    version. ``as_of`` reads the table as it was at that time or snapshot id (Iceberg time
    travel), and resolves an alias as it was then (from the table's alias log). ``columns``
    selects columns; ``filter`` is a pyiceberg row filter, as text (``"recon_error > 0.1"``)
    or an expression. ``latest`` keeps one row per entity (per model version): its newest
    event time, ties broken by the latest ``scored_at``. Latent columns that the chosen
    version does not have are dropped.
    """
    from pyiceberg.expressions import And

    tbl = load_table(table, as_stores(home))
    row_filter, snapshot_id = _version_slice(tbl, table, model_version, as_of, resolve)
    if filter is not None:
        row_filter = And(row_filter, _parse_filter(filter))
    known = tbl.schema().as_arrow().names
    unknown = [c for c in columns or [] if c not in known]
    if unknown:
        raise FeatureStoreError(f"table {table!r} has no column(s) {unknown}; columns: {known}")
    selected: tuple[str, ...] = ("*",)
    if columns:
        needed = [ENTITY_KEY, EVENT_TIMESTAMP, SCORED_AT, MODEL_VERSION] if latest else []
        selected = tuple(dict.fromkeys([*columns, *needed]))
    result = tbl.scan(
        row_filter=row_filter, selected_fields=selected, snapshot_id=snapshot_id
    ).to_arrow()
    if latest:
        result = newest_versions(result)
        if columns:
            result = result.select(columns)
    if model_version is not None and result.num_rows == 0 and filter is None:
        when = f" as of {as_of}" if as_of is not None else ""
        raise FeatureStoreError(
            f"table {table!r} has no rows for model version {model_version!r}{when}"
        )
    if model_version is not None and not columns:
        empty = [
            n
            for n in result.schema.names
            if n.startswith(LATENT_PREFIX) and result.column(n).null_count == result.num_rows
        ]
        result = result.drop_columns(empty)
    return result


def data_files(
    table: str,
    model_version: str | int | None = "champion",
    *,
    as_of: AsOf | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
    resolve: Resolver | None = None,
) -> list[str]:
    """Paths of the Parquet files that hold a version's rows in the current (or ``as_of``)
    snapshot: what DuckDB, polars or Spark read directly. Take the list from here rather than
    globbing the warehouse, which also keeps files of replaced versions for time travel."""
    tbl = load_table(table, as_stores(home))
    row_filter, snapshot_id = _version_slice(tbl, table, model_version, as_of, resolve)
    tasks = tbl.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files()
    return [t.file.file_path.removeprefix("file://") for t in tasks]


def newest_versions(rows: pa.Table) -> pa.Table:
    """One row per (model version, entity): the newest event time, ties broken by the latest
    ``scored_at``; in entity order."""
    if rows.num_rows == 0:
        return rows
    order = pc.sort_indices(
        rows,
        sort_keys=[
            (MODEL_VERSION, "ascending"),
            (ENTITY_KEY, "ascending"),
            (EVENT_TIMESTAMP, "descending"),
            (SCORED_AT, "descending"),
        ],
    )
    rows = rows.take(order)
    first = np.ones(rows.num_rows, bool)
    if rows.num_rows > 1:
        head, tail = slice(0, rows.num_rows - 1), slice(1, None)
        changed = pc.or_(
            *(
                pc.not_equal(rows.column(c)[tail], rows.column(c)[head])
                for c in (ENTITY_KEY, MODEL_VERSION)
            )
        )
        first[1:] = changed.to_numpy(zero_copy_only=False)
    return rows.filter(pa.array(first))


def version_number(
    tbl: Table,
    table: str,
    model_version: str | int,
    resolve: Resolver | None,
    at_ms: int | None = None,
) -> int:
    """A version number from a number, or from an alias of the table's registered model:
    as the table's alias log had it at ``at_ms`` when given, else through ``resolve`` when
    given, else from the aliases the table recorded."""
    if isinstance(model_version, int) or model_version.isdigit():
        return int(model_version)
    model_name = tbl.properties.get(MODEL_NAME_PROPERTY)
    if not model_name:
        raise FeatureStoreError(f"table {table!r} does not record its registered model")
    if at_ms is not None and alias_log(tbl):
        then = aliases_at(tbl, at_ms) or {}
        if model_version not in then:
            when = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat()
            raise FeatureStoreError(
                f"table {table!r} records no version with alias {model_version!r} at {when} "
                f"(recorded then: {then or 'none'}); pass a version number"
            )
        return then[model_version]
    if resolve is not None:
        return resolve(model_name, model_version)
    recorded = recorded_aliases(tbl)
    if model_version not in recorded:
        raise FeatureStoreError(
            f"table {table!r} records no version with alias {model_version!r} (recorded: "
            f"{recorded or 'none'}); pass a version number, or resolve= to ask the registry"
        )
    return recorded[model_version]


def _parse_filter(expr: str | BooleanExpression) -> BooleanExpression:
    if not isinstance(expr, str):
        return expr
    from pyiceberg.expressions.parser import parse

    try:
        return parse(expr)
    except Exception as err:  # pyparsing raises its own error types
        raise FeatureStoreError(f"cannot parse filter {expr!r}: {err}") from None


def read_features(
    table: str,
    model_version: str | int | None = "champion",
    *,
    as_of: AsOf | None = None,
    columns: list[str] | None = None,
    filter: str | BooleanExpression | None = None,
    latest: bool = False,
    home: str | os.PathLike[str] | Stores | None = None,
    resolve: Resolver | None = None,
) -> pd.DataFrame:
    """pandas DataFrame of :func:`read_features_arrow`; the usual entry point for readers."""
    return read_features_arrow(
        table,
        model_version,
        as_of=as_of,
        columns=columns,
        filter=filter,
        latest=latest,
        home=home,
        resolve=resolve,
    ).to_pandas()
