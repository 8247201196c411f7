"""The data store (``AEPIPE_DATA``): ingested and normalized Parquet, quarantine, checkpoints,
model folders, and Prefect's cached results (the Prefect side is :mod:`tasks.results`).

A folder (the default: the home; or a shared mount) is used in place. An object store
(``s3://bucket/prefix``) is a mirror of this machine's home: files are written under
``<home>/data`` and ``<home>/models`` as always, then uploaded to the same relative path under
the prefix (:func:`publish`); a machine that lacks a file fetches it from there before it
reads it (:func:`fetch`, :func:`localize`). So a run leaves nothing on local disk that a later
run or another machine needs, and the work itself still reads local files at disk speed.
Files are immutable once published (every name holds a fingerprint, a stamp or a run id), so
a fetched copy is never stale; checkpoints, which are rewritten, are uploaded whole each time.

**The accessor.** Stages reach the data store's files through six verbs only, each taking
paths or stage results (anything with a ``files()`` method naming its files: an ingest, a
normalized data set, a model version's folder), so a result cached by another home is as
usable as one made here: :func:`need` (present here, fetched when only the object store has
it, else one error naming it), :func:`present` (the same as a question, for caches),
:func:`share` (uploaded for the other machines), :func:`share_once` (uploaded unless there:
an immutable folder) and :func:`drop` (the object store's copy deleted); a worker of another
machine turns a file the planner named into one of its own with :func:`arrive`. The verbs
below them (:func:`fetch`, :func:`publish`, :func:`localize`, :func:`local_copy`,
:func:`discard`) are this package's; the layout test keeps them out of the stages.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stores import ENV_HOME, Stores, resolve_stores

OBJECT_SCHEMES = ("s3", "s3a", "s3n")
RESULTS = "results"  # Prefect's cached results, under the data store


def is_object_store(uri: str) -> bool:
    """Whether ``uri`` names an object store (``s3://...``) rather than a folder."""
    return urlsplit(uri).scheme in OBJECT_SCHEMES


def filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's file system for ``uri`` and the path inside it (``bucket/prefix``)."""
    from stores.remote import s3_filesystem

    parts = urlsplit(uri)
    return s3_filesystem(), f"{parts.netloc}{parts.path}".rstrip("/")


def remote_path(stores: Stores, local: str | os.PathLike[str]) -> str | None:
    """Where the object store keeps the home's file or folder ``local`` (bucket/key, no
    scheme); None when the data store is a folder, or ``local`` is not under the home."""
    if not is_object_store(stores.data):
        return None
    try:
        rel = Path(local).resolve().relative_to(stores.home)
    except ValueError:
        return None
    return f"{filesystem(stores.data)[1]}/{rel.as_posix()}"


def location(stores: Stores, local: str | os.PathLike[str]) -> str:
    """Where ``local`` lives for every machine: its object-store URI, or the path itself.
    Cache keys and checkpoint keys use it, so two homes on one object store agree."""
    remote = remote_path(stores, local)
    return f"{urlsplit(stores.data).scheme}://{remote}" if remote else str(local)


def publish(stores: Stores, *paths: str | os.PathLike[str] | None) -> None:
    """Upload the files (and folders, recursively) ``paths`` of this home to the object
    store; nothing to do when the data store is a folder."""
    if not is_object_store(stores.data):
        return
    import pyarrow.fs as pafs

    fs, _ = filesystem(stores.data)
    local = pafs.LocalFileSystem()
    for path in paths:
        if path is None or (target := remote_path(stores, path)) is None:
            continue
        source = Path(path)
        if source.is_dir():
            pafs.copy_files(str(source), target, local, fs, use_threads=True)
        elif source.is_file():
            pafs.copy_files(str(source), target, local, fs)


def discard(stores: Stores, path: str | os.PathLike[str]) -> None:
    """Delete the object store's copy of this home's file or folder ``path`` (say, the
    partitions' files once merged); nothing to do when the data store is a folder."""
    remote = remote_path(stores, path)
    if remote is None:
        return
    import pyarrow.fs as pafs

    fs, _ = filesystem(stores.data)
    kind = fs.get_file_info(remote).type
    with contextlib.suppress(FileNotFoundError):
        if kind == pafs.FileType.File:
            fs.delete_file(remote)
        elif kind == pafs.FileType.Directory:
            fs.delete_dir(remote)


def fetch(stores: Stores, path: str | os.PathLike[str]) -> bool:
    """Make sure this home's file or folder ``path`` is here, downloading it from the object
    store when it is missing; whether it is here now."""
    wanted = Path(path)
    if wanted.exists():
        return True
    remote = remote_path(stores, wanted)
    if remote is None:
        return False
    import pyarrow.fs as pafs

    fs, _ = filesystem(stores.data)
    info = fs.get_file_info(remote)
    if info.type == pafs.FileType.NotFound:
        return False
    # into a temporary sibling, then renamed: a reader never sees half a file or folder
    tmp = wanted.with_name(f".{wanted.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if info.type == pafs.FileType.Directory:
        tmp.mkdir()
        for item in fs.get_file_info(pafs.FileSelector(remote, recursive=True)):
            if item.type == pafs.FileType.File:
                _download(fs, item.path, tmp / item.path[len(remote) :].lstrip("/"))
    else:
        _download(fs, remote, tmp)
    try:
        os.replace(tmp, wanted)
    except OSError:  # a folder another process fetched meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return wanted.exists()


def ensure_here(stores: Stores, *paths: str | os.PathLike[str] | None) -> None:
    """Every file of a stage's result present in this home: fetched from the object store
    when this home lacks it (a cached result made by another home names files that are only
    there); a FileNotFoundError naming the first file neither holds."""
    for path in paths:
        if path is not None and not fetch(stores, path):
            where = f" nor in the data store {stores.data}" if is_object_store(stores.data) else ""
            raise FileNotFoundError(f"{path} is not in this home{where}; run it again")


def read_note(stores: Stores, path: str | os.PathLike[str]) -> bytes | None:
    """The current bytes of this home's small mutable file ``path`` (a note a run leaves for
    the next one): the object store's copy when the data store is one (a copy here may be
    stale), else the file; None when there is none."""
    remote = remote_path(stores, path)
    if remote is None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
    fs, _ = filesystem(stores.data)
    try:
        with fs.open_input_stream(remote) as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def write_note(stores: Stores, path: str | os.PathLike[str], data: bytes) -> None:
    """Replace this home's small mutable file ``path`` with ``data`` (written whole, then
    renamed), and the object store's copy with it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    publish(stores, target)


Item = Any  # a path (str or PathLike), None, or a stage result with a files() method


def _paths(items: tuple[Item, ...]) -> list[str | os.PathLike[str]]:
    """The files the ``items`` name: paths as they are, a stage result's ``files()``."""
    out: list[str | os.PathLike[str]] = []
    for item in items:
        if item is None:
            continue
        files = getattr(item, "files", None)
        out.extend(p for p in (files() if callable(files) else [item]) if p is not None)
    return out


def need(stores: Stores, *items: Item) -> None:
    """Every file of ``items`` present in this home, fetched from the object store when only
    it holds one (a result made by another home); a FileNotFoundError naming the first
    file neither holds."""
    ensure_here(stores, *_paths(items))


def present(stores: Stores, *items: Item) -> bool:
    """Whether every file of ``items`` is here now (fetched when only the object store holds
    it): a cache's question, answered without an error."""
    return all(fetch(stores, p) for p in _paths(items))


def share(stores: Stores, *items: Item) -> None:
    """Upload every file of ``items`` for the other machines (nothing on a folder store)."""
    publish(stores, *_paths(items))


def share_once(stores: Stores, *items: Item) -> None:
    """:func:`share` what the object store lacks: for files and folders that never change
    once written (a registered version's folder)."""
    publish(stores, *(p for p in _paths(items) if not published(stores, p)))


def drop(stores: Stores, *items: Item) -> None:
    """Delete the object store's copy of every file or folder of ``items`` (a run's staged
    files once merged); the local ones are the caller's."""
    for path in _paths(items):
        discard(stores, path)


def arrive(ref: str | None, origin: Stores) -> str | None:
    """A file that the machine which planned the work named, as a file on this one: its
    :func:`location` (an object-store URI) or a path under ``origin``'s home, fetched into
    this machine's own home when it has one; a path outside the homes (a source) as given."""
    if ref is not None and is_object_store(ref):
        return local_copy(ref, origin)
    return localize(ref, origin)


def _download(fs: Any, key: str, local: Path) -> None:
    """Copy the object ``key`` of ``fs`` to the file ``local`` (its folders made)."""
    import shutil

    local.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(key) as source, local.open("wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)


def published(stores: Stores, path: str | os.PathLike[str]) -> bool:
    """Whether the object store holds this home's file or folder ``path`` (False when the
    data store is a folder)."""
    remote = remote_path(stores, path)
    if remote is None:
        return False
    import pyarrow.fs as pafs

    fs, _ = filesystem(stores.data)
    return fs.get_file_info(remote).type != pafs.FileType.NotFound


def exists(stores: Stores, path: str | os.PathLike[str]) -> bool:
    """Whether this home's file ``path`` is here or in the object store (not downloaded)."""
    return Path(path).exists() or published(stores, path)


def here(origin: Stores) -> Stores:
    """This machine's stores for work planned with ``origin``: a worker started with a home
    of its own (``AEPIPE_HOME``) uses that home on ``origin``'s object store, sharing no
    folder with the machine that planned the work; otherwise ``origin`` itself."""
    if not is_object_store(origin.data) or not os.environ.get(ENV_HOME):
        return origin
    mine = resolve_stores()
    if mine.home == origin.home:
        return origin
    return mine.model_copy(update={"data": origin.data})


def rehome(path: str | os.PathLike[str], origin: Stores) -> Path:
    """Where this machine writes the file that ``origin``'s home calls ``path`` (the same
    relative path under this machine's home, when ``origin``'s home is not here)."""
    mine = here(origin)
    if mine is origin:
        return Path(path)
    return mine.home / Path(path).relative_to(origin.home)


def localize(path: str | None, origin: Stores) -> str | None:
    """``path``, written under ``origin``'s home by the machine that planned the work, as a
    file here: itself on that machine (or where the data store is a shared folder), else
    the same file under this worker's own home, fetched from the object store; a worker
    with a home of its own never reads another home's files, even on one disk."""
    mine = here(origin)
    if path is None or mine is origin:
        return path
    try:
        copy = mine.home / Path(path).relative_to(origin.home)
    except ValueError:  # not under the home: a source, say; as given
        return path
    fetch(mine, copy)
    return str(copy)


def local_copy(ref: str | None, origin: Stores) -> str | None:
    """The file a :func:`location` names, as a file here: a path as it is, an object-store
    URI fetched into this machine's home (see :func:`localize`)."""
    if ref is None or not is_object_store(ref):
        return ref
    stores = here(origin)
    root = f"{urlsplit(stores.data).scheme}://{filesystem(stores.data)[1]}/"
    if not ref.startswith(root):
        raise ValueError(f"{ref} is not in the data store {stores.data}")
    mine = stores.home / ref[len(root) :]
    if not fetch(stores, mine):
        raise FileNotFoundError(f"{ref} is not in the data store")
    return str(mine)


def results_root(stores: Stores) -> str | Path:
    """Where Prefect's cached task results go: ``results/`` of the data store (a folder, or
    an ``s3://`` URI on an object store)."""
    if is_object_store(stores.data):
        return f"{stores.data.rstrip('/')}/{RESULTS}"
    return stores.data_root / RESULTS
