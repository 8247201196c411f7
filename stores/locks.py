"""Locks that runs sharing the stores take turns with: on one machine, or on several.

Runs on one home take turns with a lock file under ``<home>/locks``; runs on several machines
share no folder, so where the catalog is a PostgreSQL database they take turns with a
PostgreSQL advisory lock in it instead (held by a connection: a run that dies lets go).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager

from stores import Stores, catalog_kind


@contextmanager
def home_lock(stores: Stores, name: str) -> Iterator[None]:
    """An exclusive lock named ``name``, for processes and threads sharing this home: a file
    under ``<home>/locks`` held with POSIX ``flock`` (where there is none, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: runs on one home rarely overlap there
        yield
        return
    folder = stores.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def shares_database(stores: Stores) -> bool:
    """Whether runs on several machines can take turns in the catalog's database (a
    PostgreSQL catalog)."""
    return catalog_kind(stores.catalog_uri) == "sql" and stores.catalog_uri.startswith("postgresql")


@contextmanager
def store_lock(stores: Stores, name: str) -> Iterator[None]:
    """An exclusive lock named ``name`` for every run on these stores: a PostgreSQL advisory
    lock in the catalog's database when it is one (runs on any machine), else
    :func:`home_lock` (runs sharing this home)."""
    if not shares_database(stores):
        with home_lock(stores, name):
            yield
        return
    import sqlalchemy as sa

    key = int.from_bytes(hashlib.sha256(f"aepipe:{name}".encode()).digest()[:8], "big", signed=True)
    engine = sa.create_engine(stores.catalog_uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
    finally:
        engine.dispose()
