"""What every source reader provides (:class:`SourceReader`), and the pieces readers and
the ingest pass between them: a partition (:class:`IngestPart`), a row set aside unread
(:class:`Skipped`), a parsed batch (:class:`Parsed`).

A reader is one of two kinds. A *table* reader hands over Arrow record batches (or raw
pieces it parses itself, on the ingest's worker threads); :class:`tasks.io.tables.TableReader`
then types their columns and quarantines unusable rows, the same for every table source.
An *array* reader hands over decoded numeric arrays (:class:`tasks.io.arrays.ArrayData`):
pixels of a fixed scale, or a matrix."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa

from tasks.errors import ConfigError

if TYPE_CHECKING:
    from tasks.config import SourceConfig
    from tasks.io.arrays import ArrayData, ImageLayout


@dataclass(frozen=True)
class IngestPart:
    """The slice of a source one ingest task reads: files (image paths relative to the
    folder, Parquet files, files of lines) with their row groups or byte ranges (None: all),
    or what a reader of another kind names its slices by, starting at source row
    ``first_row``."""

    index: int
    files: list[str]
    row_groups: list[list[int] | None] | None = None
    first_row: int = 0
    ranges: list[tuple[int, int] | None] | None = None


@dataclass(frozen=True)
class FileStart:
    """Told by a reader of several files before each file's rows: the file, the byte its
    read starts at, and how the quarantine names the place (rows are then counted from 0
    within it)."""

    path: str
    start: int
    where: str


@dataclass(frozen=True)
class Skipped:
    """A row a reader set aside without parsing it (a line too long to hold, say): where it
    is and why, for the quarantine."""

    location: str
    reason: str


@dataclass
class Parsed:
    """One item parsed into a table: rows the parser could not split into fields (why, and
    their text), and whether bytes that were not UTF-8 were replaced (U+FFFD)."""

    table: pa.Table
    ragged: list[tuple[str, str]]
    repaired: bool


@dataclass(frozen=True)
class ReadPlan:
    """How a reader splits its source: the partitions, and for images the layout every image
    decodes to and whether the folder's subfolders name the labels; ``marker``: where the
    source stood when planned (:meth:`SourceReader.marker`), for a later incremental read."""

    parts: list[IngestPart]
    layout: ImageLayout | None = None
    labelled: bool = False
    marker: str | None = None


class IncrementalUnavailable(ConfigError):
    """An incremental read cannot be made (the marker's snapshot expired, nothing came
    after it, ...): the caller reads the whole source and compares instead; the message
    says why."""


class SourceReader:
    """One source kind. Subclasses set :attr:`name` and :attr:`kind` and override what
    their source does differently; the defaults fit a source of local files."""

    name: ClassVar[str]
    kind: ClassVar[Literal["table", "array"]] = "table"
    suffixes: ClassVar[tuple[str, ...]] = ()  # file names it reads, lower case
    folder_suffixes: ClassVar[frozenset[str]] = frozenset()  # a folder of these is its
    folder_noun: ClassVar[str] = ""  # what those files are, in words
    text_values: ClassVar[bool] = False  # values arrive as text (a label stays text)

    # --- telling the source ------------------------------------------------------------
    def claims(self, path: str) -> bool:
        """Whether ``path`` names a source of this kind, from the name alone."""
        name = Path(path).name.lower()
        return any(name.endswith(s) for s in self.suffixes)

    def check_exists(self, src: SourceConfig) -> None:
        """A ConfigError when the source is not there."""
        from tasks.errors import ConfigError

        try:
            there = exists(src.path)
        except OSError as err:  # an object store that does not answer, or refuses the keys
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"cannot reach source {src.path!r}: {first}") from None
        if not there:
            raise ConfigError(f"source file {src.path!r} does not exist")

    def listing(self, src: SourceConfig) -> list[str] | None:
        """The files of a folder source, read once and handed to the other calls (images)."""
        return None

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The source's column names, read without loading it."""
        raise NotImplementedError

    def label(self, src: SourceConfig, columns: list[str]) -> str | None:
        """The label column: the configured one for tables."""
        return src.label

    def check_settings(self, src: SourceConfig) -> None:
        """A ConfigError for settings this kind cannot use."""

    # --- reading -----------------------------------------------------------------------
    def plan(
        self,
        src: SourceConfig,
        partition_rows: int,
        listing: list[str] | None = None,
        since: str | None = None,
    ) -> ReadPlan:
        """The partitions ingest tasks read (one by default); with ``since`` (an earlier
        :meth:`marker`), only what the source gained after it."""
        if since is not None:
            raise IncrementalUnavailable(f"{self.name} sources are read whole")
        return ReadPlan([IngestPart(0, [src.path])])

    def marker(self, src: SourceConfig) -> str | None:
        """Where the source stands now, for a later run to read only what came after (an
        Iceberg snapshot, a watermark's highest value, the newest file's time); None when
        this kind cannot say."""
        return None

    def check_parts(
        self, src: SourceConfig, parts: list[IngestPart], needed: list[str], kinds: dict
    ) -> list[str]:
        """Check every partition has the ``needed`` columns of the ``kinds`` decided; the
        columns some partitions hold beyond them (warned about, then ignored)."""
        return []

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[Any]:
        """A table partition's rows (the whole source when ``part`` is None) as record
        batches of the ``needed`` columns, :class:`Skipped` rows, or raw pieces that
        :meth:`parse` turns into tables; ``sample``: only enough to decide column kinds."""
        raise NotImplementedError

    def parse(self, item: Any, columns: list[str], src: SourceConfig) -> Parsed:
        """One item of :meth:`items` as a table (run on the ingest's worker threads)."""
        return Parsed(pa.Table.from_batches([item]), [], False)

    def locate(self, src: SourceConfig, path: str, start: int, texts: list[str]) -> list:
        """The line numbers of ragged rows' ``texts`` in the file ``path`` (read from byte
        ``start``), where the source has lines (None: not known)."""
        return [None] * len(texts)

    def blocks(self, src: SourceConfig, part: IngestPart, plan: Any) -> Iterator[ArrayData]:
        """An array partition's rows, in blocks of decoded arrays."""
        raise NotImplementedError

    def has_label(self, src: SourceConfig, columns: list[str], labelled: bool) -> bool:
        """Whether the ingested rows carry a label."""
        return bool(src.label)

    # --- caching -----------------------------------------------------------------------
    def files(self, src: SourceConfig) -> list[str]:
        """The files the source reads (its fingerprint's and content digest's input)."""
        return list_files(src.path)

    def stat_digest(self, src: SourceConfig, listing: list[str] | None = None) -> str:
        """What tells a run the source changed without reading it: the files' paths, sizes
        and modification times (``os.stat`` on strings: cheap on 70,000 files)."""
        return stat_lines(src.path, self.files(src))

    def change_digest(self, src: SourceConfig, listing: list[str] | None = None) -> str:
        """What the source's fingerprint holds of it: its content digest, or its files'
        stats (``source.fingerprint``)."""
        if src.fingerprint == "content":
            return self.content_digest(src)
        return self.stat_digest(src, listing)

    def content_digest(self, src: SourceConfig) -> str:
        """SHA-256 of the source's bytes (every file of a folder, in order), streamed."""
        h = hashlib.sha256()
        for p in self.files(src):
            h.update(os.path.basename(p).encode())
            with open_raw(p) as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    def merged_digest(self, src: SourceConfig, part_digests: list[str]) -> str:
        """The ingested data set's digest: its bytes' for a table of files."""
        return self.content_digest(src)

    def write_bound(self, src: SourceConfig, plan: Any) -> int:
        """An upper bound of the bytes ingesting writes: the partitions' files and the
        merged copy, each at most the source's size."""
        return 2 * sum(size for size, _ in file_stats(self.files(src)))


class FileSetReader(SourceReader):
    """A source of one file, every file of its kind under a folder or an object-store
    prefix, or a glob: the files are :meth:`source_files`; a folder has a marker (its newest
    file's time and its number of files) for reading only newer files later."""

    def source_files(self, src: SourceConfig) -> list[str]:
        """The files the source reads, in order."""
        raise NotImplementedError

    def check_exists(self, src: SourceConfig) -> None:
        """A glob needs no file of its name; what it matches is checked by ``columns``."""
        if is_remote(src.path) or not any(c in src.path for c in "*?["):
            super().check_exists(src)

    def files(self, src: SourceConfig) -> list[str]:
        """The matched files (a folder's every file, for its fingerprint)."""
        if is_folder(src.path):
            return super().files(src)
        return self.source_files(src)

    def marker(self, src: SourceConfig) -> str | None:
        """A folder's (or prefix's) newest file time and its number of files: later runs
        read newer files only, while the files up to that time are still as many."""
        if not is_folder(src.path):
            return None
        return folder_marker([t for _, t in file_stats(self.source_files(src))])


def folder_marker(times: list[int]) -> str:
    """``<newest time>/<number of files>``: what an incremental read of a folder reads past."""
    return f"{max(times, default=0)}/{len(times)}"


def files_since(path: str, files: list[str], since: str | None) -> tuple[list[str], str]:
    """A folder's ``files`` written after the newest one an earlier read saw (all when
    ``since`` is None), and the folder's marker now. IncrementalUnavailable when files
    appeared with older times than that (copied keeping theirs: ``cp -p``, ``rsync -t``)
    or went, or when no file is newer."""
    times = [mtime for _, mtime in file_stats(files)]
    if since is None:
        return files, folder_marker(times)
    if not re.fullmatch(r"\d+/\d+", since):
        raise IncrementalUnavailable(f"the last read's marker {since!r} is not a folder's")
    newest, count = (int(v) for v in since.split("/"))
    if sum(t <= newest for t in times) != count:
        raise IncrementalUnavailable(
            f"{path!r} holds another number of files up to the last read's newest "
            f"time than it did then ({count}): files came with older times, or went"
        )
    files = [f for f, t in zip(files, times, strict=True) if t > newest]
    if not files:
        raise IncrementalUnavailable(f"no file of {path!r} is newer than the last read")
    return files, folder_marker(times)


def stat_lines(root: str, files: list[str]) -> str:
    """``root`` resolved, then a line per file: its path, size and modification time."""
    stats = file_stats(files)
    lines = (f"{p}|{size}|{mtime}" for p, (size, mtime) in zip(files, stats, strict=True))
    return (root if is_remote(root) else str(Path(root).resolve())) + "\n".join(lines)


# --- files here or in an object store (s3://bucket/key, through pyarrow's S3 file system on
# the same AWS_* settings as aepipe's own stores)
REMOTE_SCHEMES = ("s3://", "s3a://", "s3n://")


def is_remote(path: str) -> bool:
    """Whether ``path`` names an object in an object store."""
    return path.startswith(REMOTE_SCHEMES)


def _fs(path: str) -> tuple[Any, str]:
    """The file system holding ``path`` and the path within it."""
    import pyarrow.fs as pafs

    if is_remote(path):
        from stores.remote import s3_filesystem

        return s3_filesystem(), path.split("://", 1)[1]
    return pafs.LocalFileSystem(), os.path.abspath(path)


def open_raw(path: str) -> Any:
    """The file's bytes as stored, streamed."""
    if not is_remote(path):
        return open(path, "rb")
    fs, key = _fs(path)
    return fs.open_input_stream(key, compression=None)  # as stored: no guess by name


def open_bytes(path: str) -> Any:
    """The file's bytes, streamed and decompressed when its name ends in ``.gz``."""
    raw = open_raw(path)
    return _Gunzip(fileobj=raw) if path.lower().endswith(".gz") else raw


class _Gunzip(gzip.GzipFile):
    """A gzip stream that closes the file it reads when it is closed."""

    def close(self) -> None:
        raw = self.fileobj
        super().close()
        if raw is not None:
            raw.close()


def open_random(path: str) -> Any:
    """The file for random access (a Parquet file's footer, then its row groups)."""
    if not is_remote(path):
        return path
    fs, key = _fs(path)
    return fs.open_input_file(key)


def open_seekable(path: str) -> Any:
    """The file's stored bytes as a file object that seeks (a byte range of a large file)."""
    if not is_remote(path):
        return open(path, "rb")
    fs, key = _fs(path)
    return fs.open_input_file(key)


def exists(path: str) -> bool:
    """Whether a file, folder or object-store prefix is there (OSError: it cannot be
    reached)."""
    import pyarrow.fs as pafs

    if not is_remote(path):
        return os.path.exists(path)
    fs, key = _fs(path)
    return fs.get_file_info(key.rstrip("/")).type != pafs.FileType.NotFound


def is_folder(path: str) -> bool:
    """Whether ``path`` is a folder (an object-store prefix with objects under it)."""
    import pyarrow.fs as pafs

    if not is_remote(path):
        return os.path.isdir(path)
    fs, key = _fs(path)
    return fs.get_file_info(key.rstrip("/")).type == pafs.FileType.Directory


def list_files(path: str) -> list[str]:
    """Every file under a folder or prefix (sorted, as ``path``'s scheme names them), or
    ``[path]`` for a file."""
    import pyarrow.fs as pafs

    if not is_remote(path):
        if not os.path.isdir(path):
            return [path]
        return [
            os.path.join(folder, n)
            for folder, _, names in sorted(os.walk(path))
            for n in sorted(names)
        ]
    if not is_folder(path):
        return [path]
    fs, key = _fs(path)
    scheme = path.split("://", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(key.rstrip("/"), recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File)


def file_stats(paths: list[str]) -> list[tuple[int, int]]:
    """Size and modification time (ns) of each file (``os.stat`` on strings locally:
    cheap on 70,000 files; one listing call per object otherwise)."""
    if not any(is_remote(p) for p in paths):
        return [(st.st_size, st.st_mtime_ns) for st in map(os.stat, paths)]
    out = []
    for p in paths:
        fs, key = _fs(p)
        info = fs.get_file_info(key)
        out.append((int(info.size or 0), int(info.mtime_ns or 0)))
    return out
