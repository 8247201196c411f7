"""Prefect's cached task results on the data store (``AEPIPE_DATA``): a folder as it is, an
object store through a result-storage block on pyarrow's S3 file system."""

from __future__ import annotations

from pathlib import Path

from prefect.filesystems import WritableFileSystem
from pydantic import Field

from stores import Stores
from stores.data import filesystem as _fs
from stores.data import is_object_store, results_root


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
        fs, key = _fs(self._resolve_path(path))
        try:
            with fs.open_input_stream(key) as stream:
                return stream.read()
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


def result_storage(stores: Stores) -> Path | WritableFileSystem:
    """Where Prefect keeps this run's cached task results: ``results/`` of the data store (a
    folder; or, on an object store, a result-storage block saved on the Prefect server, as
    Prefect requires of any storage but a folder)."""
    root = results_root(stores)
    return root if isinstance(root, Path) else _saved_results(root)


def _saved_results(basepath: str) -> WritableFileSystem:
    """The :class:`ObjectStoreResults` block of ``basepath``, saved on this run's Prefect
    server under a name of its own (a few API calls; each run may talk to another server)."""
    import hashlib

    block = ObjectStoreResults(basepath=basepath)
    name = f"aepipe-results-{hashlib.sha256(basepath.encode()).hexdigest()[:16]}"
    block.save(name, overwrite=True)
    return block
