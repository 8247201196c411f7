"""The Iceberg catalog behind the feature tables: finding, creating and widening tables.

Tables live in a pyiceberg SQL catalog (SQLite by default, Postgres in production) with Parquet
data files in a warehouse folder (local by default, S3/GCS in production), under the namespace
``aepipe``. Each table is partitioned by model name and version, so one version is read or
replaced alone. A table records the registered model that writes it and, at each commit, the
aliases that model's versions held (``aepipe.alias.<alias>``): what readers resolve
``"champion"`` to without asking the registry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ae_models.vocabulary import LATENT_PREFIX
from feature_store.schema import PARTITION_COLUMNS, code_size_of, feature_schema
from stores import ENV_WAREHOUSE, NAMESPACE, Stores, resolve_stores

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

MODEL_NAME_PROPERTY = "aepipe.model_name"
ALIAS_PROPERTY = "aepipe.alias."  # + alias name: the version that held it at the last commit
# JSON list of {"at": epoch ms, "aliases": {alias: version}}: every change of the record, so a
# read as of a time resolves "champion" to the version that held it then
ALIAS_LOG_PROPERTY = "aepipe.alias_log"
COMMIT_RETRIES_PROPERTY = "commit.retry.num-retries"
COMMIT_RETRIES = "10"  # pyiceberg retries a commit that lost a race with another writer
METADATA_VERSIONS = 20  # metadata files kept besides the current one; older ones deleted
MERGE_MANIFESTS_AT = 8  # an append merges the data manifests once there are this many
# Every table gets these: a scoring run a day (or an hour) adds a commit each time, and the
# metadata must not grow with every commit: old metadata files go at commit time, manifests
# are merged by appends, and table upkeep expires the snapshots (soak: benchmarks/soak.py).
TABLE_PROPERTIES = {
    COMMIT_RETRIES_PROPERTY: COMMIT_RETRIES,
    "write.metadata.previous-versions-max": str(METADATA_VERSIONS),
    "write.metadata.delete-after-commit.enabled": "true",
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": str(MERGE_MANIFESTS_AT),
}


COMMIT_ID = "aepipe.commit_id"  # snapshot summary: which commit made it


class FeatureStoreError(LookupError):
    """A feature table, version or store that does not exist; the message says which."""


def table_identifier(table: str) -> str:
    """Fully qualified ``namespace.table`` name for a bare feature table name."""
    return table if "." in table else f"{NAMESPACE}.{table}"


def store_exists(stores: Stores) -> bool:
    """Whether the stores hold a feature store yet: a remote catalog always counts; a local
    SQLite one once its database file exists."""
    if stores.catalog_uri.startswith("sqlite:///"):
        return Path(stores.catalog_uri.removeprefix("sqlite:///")).exists()
    return True


def get_catalog(stores: Stores, create: bool = False) -> Catalog:
    """The Iceberg catalog of ``stores`` (``AEPIPE_CATALOG``: a SQL URI, a REST catalog's URL,
    or a catalog configured for pyiceberg by name), loaded with pyiceberg's ``load_catalog``;
    with ``create=False`` a missing local SQLite one is an error rather than silently
    created."""
    from pyiceberg.catalog import load_catalog

    from stores import catalog_kind
    from stores.remote import fileio_properties

    uri = stores.catalog_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            if not create:
                raise FeatureStoreError(
                    f"no feature store at {stores.home} (catalog {db} does not exist); "
                    "run `aepipe run` first or set AEPIPE_HOME"
                )
            db.parent.mkdir(parents=True, exist_ok=True)
    if stores.warehouse.startswith("file://") and create:
        Path(stores.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    kind = catalog_kind(uri)
    if kind == "named":  # configured in .pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__*
        return racing(lambda: load_catalog(uri))
    props = {"type": kind, "uri": uri, "warehouse": stores.warehouse}
    if kind == "rest" and not os.environ.get(ENV_WAREHOUSE):
        del props["warehouse"]  # a REST catalog places tables itself unless told
    if stores.warehouse.startswith(("s3://", "s3a://", "s3n://")):
        props.update(fileio_properties())
    return racing(lambda: load_catalog("aepipe", **props))


def racing(step: Any, attempts: int = 6) -> Any:
    """Run an idempotent set-up step (create the catalog's tables, a namespace, a table and
    its partitioning), again when another process or run doing the same lost or won a race
    with this one (a table that "already exists", a unique key taken, a commit that lost):
    two first runs on a fresh home both get there."""
    import random
    import time

    from pyiceberg.exceptions import CommitFailedException
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return step()
        except (OperationalError, IntegrityError, CommitFailedException):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def as_stores(home: str | os.PathLike[str] | Stores | None) -> Stores:
    """``home`` as resolved stores: a Stores as it is, else the stores under that folder."""
    return home if isinstance(home, Stores) else resolve_stores(home)


def load_table(table: str, home: str | os.PathLike[str] | Stores | None = None) -> Table:
    """The Iceberg table behind a feature table name (raises FeatureStoreError if absent)."""
    from pyiceberg.exceptions import NoSuchTableError

    catalog = get_catalog(as_stores(home))
    try:
        return catalog.load_table(table_identifier(table))
    except NoSuchTableError:
        names = list_tables(home)
        raise FeatureStoreError(f"no feature table {table!r}; tables: {names}") from None


def list_tables(home: str | os.PathLike[str] | Stores | None = None) -> list[str]:
    """Names of the feature tables in the store."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    catalog = get_catalog(as_stores(home))
    try:
        return sorted(ident[-1] for ident in catalog.list_tables(NAMESPACE))
    except NoSuchNamespaceError:
        return []


def ensure_table(catalog: Catalog, table: str, code_size: int, model_name: str) -> Table:
    from pyiceberg.exceptions import NoSuchTableError

    catalog.create_namespace_if_not_exists(NAMESPACE)
    ident = table_identifier(table)
    try:
        tbl = catalog.load_table(ident)
    except NoSuchTableError:
        schema = _table_schema(code_size)
        tbl = catalog.create_table_if_not_exists(
            ident,
            schema=schema,
            properties={MODEL_NAME_PROPERTY: model_name, **TABLE_PROPERTIES},
        )
        if tbl.spec().is_unpartitioned():
            with tbl.update_spec() as spec:
                for col in PARTITION_COLUMNS:
                    spec.add_identity(col)
    tbl = with_table_properties(tbl)
    current = tbl.schema().as_arrow()
    wanted = _table_schema(code_size)
    if code_size_of(current) < code_size or set(wanted.names) - set(current.names):
        # a longer code, or columns added in a later aepipe: widen (old rows read as null)
        with tbl.update_schema() as update:
            update.union_by_name(_table_schema(code_size))
    return tbl


def with_table_properties(tbl: Table) -> Table:
    """``tbl`` with those of :data:`TABLE_PROPERTIES` it lacks (a table an older aepipe made);
    values set on the table stay."""
    missing = {k: v for k, v in TABLE_PROPERTIES.items() if k not in tbl.properties}
    if not missing:
        return tbl
    with tbl.transaction() as tx:
        tx.set_properties(missing)
    return tbl.refresh()


def _table_schema(code_size: int) -> pa.Schema:
    """Table schema: latent columns optional so versions with other code sizes can share it."""
    base = feature_schema(code_size)
    return pa.schema(
        [f.with_nullable(True) if f.name.startswith(LATENT_PREFIX) else f for f in base]
    )


def recorded_aliases(tbl: Table) -> dict[str, int]:
    """The aliases a table recorded at its last commit (or alias update), with their versions."""
    return {
        key.removeprefix(ALIAS_PROPERTY): int(value)
        for key, value in tbl.properties.items()
        if key.startswith(ALIAS_PROPERTY)
    }


def alias_log(tbl: Table) -> list[tuple[int, dict[str, int]]]:
    """Every change of the table's recorded aliases, oldest first: (epoch ms, aliases)."""
    import json

    entries = json.loads(tbl.properties.get(ALIAS_LOG_PROPERTY, "[]"))
    return [(int(e["at"]), {k: int(v) for k, v in e["aliases"].items()}) for e in entries]


def aliases_at(tbl: Table, at_ms: int) -> dict[str, int] | None:
    """The aliases the table recorded at ``at_ms``; None when its log starts later (or the
    table was written before aepipe kept one)."""
    found = None
    for when, aliases in alias_log(tbl):
        if when > at_ms:
            break
        found = aliases
    return found


def commits(tbl: Table) -> list[list[Any]]:
    """The table's snapshots in commit order, grouped by the commit that made them: a
    replacement is two snapshots (the version's rows deleted, the new files added) that one
    catalog update made visible together, so readers and upkeep treat them as one."""
    by_id = {snap.snapshot_id: snap for snap in tbl.snapshots()}
    groups: list[list[Any]] = []
    last_id = None
    for entry in tbl.history():
        snap = by_id.get(entry.snapshot_id)
        if snap is None:
            continue
        commit_id = snap.summary.get(COMMIT_ID) if snap.summary is not None else None
        if groups and commit_id is not None and commit_id == last_id:
            groups[-1].append(snap)
        else:
            groups.append([snap])
        last_id = commit_id
    return groups


def commit_as_of(tbl: Table, at_ms: int) -> list[Any] | None:
    """The last commit (its snapshots) that had landed by ``at_ms``; None before the first."""
    found = None
    for group in commits(tbl):
        if group[-1].timestamp_ms > at_ms:
            break
        found = group
    return found


def check_catalog(stores: Stores) -> None:
    """Raise StoreUnavailable unless a remote catalog answers: a database catalog takes a
    connection, a REST catalog answers, a named one loads and lists its namespaces. The
    local SQLite default is created on first use and not checked."""
    from stores import catalog_kind, redact_uri
    from stores.remote import StoreUnavailable, check_database

    catalog = stores.catalog_uri
    kind = catalog_kind(catalog)
    if kind == "sql" and catalog.startswith("sqlite"):
        return
    try:
        if kind == "sql":
            check_database(catalog)
        else:
            get_catalog(stores, create=True).list_namespaces()
    except StoreUnavailable as err:
        raise StoreUnavailable(stores.redact(str(err))) from None
    except Exception as err:  # HTTP clients and pyiceberg raise many types
        text = str(err).strip()
        first = stores.redact(text.splitlines()[0] if text else type(err).__name__)
        raise StoreUnavailable(
            f"the Iceberg catalog {redact_uri(catalog)} cannot be used: {first[:300]}"
        ) from None
