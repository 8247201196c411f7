"""Prefect's cached task results on the data store (``AEPIPE_DATA``): a folder, or an object
store through pyarrow's S3 file system, each through a result-storage block of aepipe's.

A result record names its own serializer, and Prefect deserializes with whatever it names:
a record planted in ``results/`` (anyone who can write to the home or the data store) that
names ``pickle``, or JSON with another object decoder, would run code in the next run that
reads it. Both storages read only records that name exactly aepipe's JSON serializer and hold
only aepipe's own reference types (:func:`checked_record`); any other is not read, Prefect's
cache lookup misses, and the task runs again and writes a JSON record over it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect.filesystems import WritableFileSystem
from pydantic import Field

from stores import Stores
from stores.data import filesystem as _fs
from stores.data import is_object_store, results_root

log = logging.getLogger(__name__)
# the only types a cached result of aepipe's holds (the references its cached tasks return),
# by their home and by the names records of earlier releases give them (still importable
# there, so an upgrade reads its cache instead of ingesting again)
RESULT_TYPES = frozenset(
    {
        "tasks.stages.IngestResult",
        "tasks.stages.IngestedPart",
        "tasks.stages.NormalizedData",
        "tasks.ingest.IngestResult",
        "tasks.ingest.IngestedPart",
        "tasks.normalize.NormalizedData",
    }
)


class RefusedResult(ValueError):
    """A cached result record aepipe does not read (not its JSON serializer, or other types)."""


def checked_record(content: bytes, where: str) -> bytes:
    """``content`` when it is a result record of aepipe's: JSON, naming Prefect's JSON
    serializer with its own object encoder and decoder, holding only :data:`RESULT_TYPES`;
    :class:`RefusedResult` (logged) otherwise, before anything in it is deserialized."""
    from prefect.serializers import JSONSerializer

    expected = JSONSerializer().model_dump(mode="json")
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]
        result = record["result"]
    except (ValueError, KeyError, TypeError):
        serializer, result = None, None
    reason = None
    if serializer != expected:
        kind = serializer.get("type") if isinstance(serializer, dict) else None
        reason = f"it names the serializer {kind!r} with other settings than aepipe's JSON"
    else:
        try:
            found = _classes(json.loads(result)) if isinstance(result, str) else {"?"}
        except ValueError:
            found = {"?"}
        if found - RESULT_TYPES:
            reason = f"it holds types aepipe does not cache: {sorted(found - RESULT_TYPES)}"
    if reason is not None:
        message = f"the cached result {where} is not read: {reason}; the task runs again"
        log.warning(message)
        raise RefusedResult(message)
    return content


def _classes(value: object) -> set[str]:
    """Every ``__class__`` name in a decoded JSON value (Prefect's typed-object marker)."""
    if isinstance(value, dict):
        own = {str(value["__class__"])} if "__class__" in value else set()
        return own.union(*(_classes(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_classes(v) for v in value))
    return set()


class FolderResults(WritableFileSystem):
    """Prefect result storage in a folder (the data store's ``results/``) that reads only
    aepipe's own JSON records (:func:`checked_record`)."""

    _block_type_name = "aepipe folder results"

    basepath: str = Field(description="the folder under which results are kept")

    def _resolve_path(self, path: str) -> Path:
        return Path(self.basepath) / path if not Path(path).is_absolute() else Path(path)

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The bytes of the result at ``path``, when it is a record aepipe reads."""
        resolved = self._resolve_path(path)
        if not resolved.is_file():
            raise ValueError(f"Path {path} does not exist.")
        return checked_record(resolved.read_bytes(), str(resolved))

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        """Write ``content`` as the result at ``path`` (atomically); its path."""
        resolved = self._resolve_path(path)
        resolved.parent.mkdir(parents=True, exist_ok=True)
        partial = resolved.with_name(f".{resolved.name}.partial")
        partial.write_bytes(content)
        partial.replace(resolved)
        return str(resolved)

    async def aread_path(self, path: str) -> bytes:
        """:meth:`read_path` for Prefect's async engine."""
        return self.read_path(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """:meth:`write_path` for Prefect's async engine."""
        return self.write_path(path, content)


class ObjectStoreResults(WritableFileSystem):
    """Prefect result storage on the object store of ``AEPIPE_DATA``, through pyarrow's S3
    file system (the one the warehouse uses; no s3fs needed): cached task results are shared
    by every machine, keyed as on one."""

    _block_type_name = "aepipe object store results"

    basepath: str = Field(description="s3://bucket/prefix under which results are kept")

    def _resolve_path(self, path: str) -> str:
        if is_object_store(path):
            return path
        return f"{self.basepath.rstrip('/')}/{path.lstrip('/')}"

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The bytes of the result at ``path`` (relative to the base, or a whole URI)."""
        uri = self._resolve_path(path)
        fs, key = _fs(uri)
        try:
            with fs.open_input_stream(key) as stream:
                return checked_record(stream.read(), uri)
        except FileNotFoundError:
            raise ValueError(f"Path {path} does not exist.") from None

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        """Write ``content`` as the result at ``path``; its whole URI."""
        uri = self._resolve_path(path)
        fs, key = _fs(uri)
        with fs.open_output_stream(key) as stream:
            stream.write(content)
        return uri

    # Prefect calls these from its async engine; the S3 calls are short and blocking
    async def aread_path(self, path: str) -> bytes:
        """:meth:`read_path` for Prefect's async engine."""
        return self.read_path(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """:meth:`write_path` for Prefect's async engine."""
        return self.write_path(path, content)


def result_storage(stores: Stores) -> WritableFileSystem:
    """Where Prefect keeps this run's cached task results: ``results/`` of the data store, a
    folder or an object store, as a result-storage block saved on the Prefect server (as
    Prefect requires of any storage but a plain folder) that reads only aepipe's records."""
    root = results_root(stores)
    return _saved_results(
        str(root), FolderResults if isinstance(root, Path) else ObjectStoreResults
    )


def _saved_results(basepath: str, kind: type[WritableFileSystem]) -> WritableFileSystem:
    """The ``kind`` block of ``basepath``, saved on this run's Prefect server under a name of
    its own (a few API calls; each run may talk to another server)."""
    import hashlib

    block = kind(basepath=basepath)
    name = f"aepipe-results-{hashlib.sha256(basepath.encode()).hexdigest()[:16]}"
    block.save(name, overwrite=True)
    return block
