"""Parquet sources: a file, every Parquet file under a folder, or a glob; partitioned by row
groups, each file's schema checked against the first's before any row is read."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io.readers.base import (
    FileSetReader,
    IncrementalUnavailable,
    IngestPart,
    ReadPlan,
    files_since,
    is_folder,
    is_remote,
    list_files,
    open_random,
)
from tasks.io.tables import BATCH_ROWS, type_class

if TYPE_CHECKING:
    from tasks.config import SourceConfig

PARQUET_SUFFIXES = (".parquet", ".pq")


def parquet_files(path: str) -> list[str]:
    """Files behind a Parquet source: one file, every ``*.parquet`` under a folder or an
    object-store prefix, or a glob."""
    if is_remote(path):
        return [f for f in list_files(path) if f.lower().endswith(PARQUET_SUFFIXES)]
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in PARQUET_SUFFIXES)
    if any(ch in path for ch in "*?["):
        return sorted(glob.glob(path, recursive=True))
    return [path]


# the kinds of value a file may hold for a column of each kind: numbers and booleans may
# also come as text, which is then checked value by value (rows that do not parse are
# quarantined); text columns take only text (a number there cannot be checked against the
# levels, and would be scored as an unseen one)
KIND_ACCEPTS = {"num": {"number", "text"}, "bool": {"boolean", "text"}, "cat": {"text"}}


def check_parquet_files(files: list[str], needed: list[str], kinds: dict[str, str]) -> list[str]:
    """Check every file of a Parquet source before any row is read: each has the ``needed``
    columns, and each feature column (``kinds``: its decided kind) holds a kind of value
    that kind accepts (:data:`KIND_ACCEPTS`; int64 and float64 are both numbers). Raises
    ValueError naming the file, the column and both types; returns the columns some file
    has beyond the first file's (read by nobody: the features are the first file's)."""
    first: dict[str, tuple[pa.DataType, str]] = {}
    base: set[str] | None = None
    extra: list[str] = []
    for path in files:
        schema = pq.read_schema(open_random(path))
        names = set(schema.names)
        missing = [c for c in needed if c not in names]
        if missing:
            raise ValueError(f"Parquet file {path!r} lacks column(s) {missing}")
        if base is None:
            base = names
        extra += [c for c in schema.names if c not in base and c not in extra]
        for name, kind in kinds.items():
            t = schema.field(name).type
            held = type_class(t)
            if held == "null":
                continue
            first.setdefault(name, (t, path))
            if held not in KIND_ACCEPTS[kind]:
                was, where = first[name]
                raise ValueError(
                    f"column {name!r} is {was} in {where!r} but {t} in {path!r}: a column "
                    "must hold one kind of value in every file (cast the file back, or "
                    "ingest the new shape as another data set)"
                )
    return extra


def _parquet_parts(files: list[str], partition_rows: int) -> list[IngestPart]:
    """Row-group ranges of about ``partition_rows`` rows, small files grouped together, with
    each part's first source row (so default ids stay source row numbers)."""
    parts: list[IngestPart] = []
    files_of: list[str] = []
    groups_of: list[list[int] | None] = []
    rows = first = start = 0

    def close() -> None:
        nonlocal files_of, groups_of, rows, first
        if files_of:
            parts.append(IngestPart(len(parts), files_of, groups_of, first))
        files_of, groups_of, rows, first = [], [], 0, start

    for path in files:
        meta = pq.ParquetFile(open_random(path)).metadata
        groups: list[int] = []
        for g in range(meta.num_row_groups):
            if rows >= partition_rows:
                if groups:
                    files_of.append(path)
                    groups_of.append(groups)
                    groups = []
                close()
            n = meta.row_group(g).num_rows
            groups.append(g)
            rows += n
            start += n
        if groups or meta.num_row_groups == 0:
            files_of.append(path)
            whole = len(groups) == meta.num_row_groups
            groups_of.append(None if whole else groups)
    close()
    return parts or [IngestPart(0, [], [], 0)]


class ParquetReader(FileSetReader):
    """Parquet files, in row-group ranges of about ``partition_rows`` rows."""

    name = "parquet"
    suffixes = PARQUET_SUFFIXES
    folder_suffixes = frozenset(suffixes)
    folder_noun = "Parquet files"

    def source_files(self, src: SourceConfig) -> list[str]:
        """:func:`parquet_files`."""
        return parquet_files(src.path)

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The first file's column names."""

        from tasks.errors import ConfigError

        try:
            files = parquet_files(src.path)
            if not files:
                raise ConfigError(f"no Parquet files match {src.path!r}")
            return list(pq.read_schema(open_random(files[0])).names)
        except (pa.ArrowInvalid, OSError) as err:
            raise ConfigError(f"cannot read Parquet schema of {src.path!r}: {err}") from None

    def plan(
        self,
        src: SourceConfig,
        partition_rows: int,
        listing: list[str] | None = None,
        since: str | None = None,
    ) -> ReadPlan:
        """Row-group ranges of the files; with ``since`` (from :meth:`marker`), of the files
        written after the newest one read then only, unless files appeared with older times
        (copied keeping theirs: ``cp -p``, ``rsync -t``) or went: then every file is read."""
        files = parquet_files(src.path)
        if not is_folder(src.path):
            if since is not None:
                raise IncrementalUnavailable("a single Parquet file or a glob is read whole")
            return ReadPlan(_parquet_parts(files, partition_rows))
        files, marker = files_since(src.path, files, since)
        return ReadPlan(_parquet_parts(files, partition_rows), marker=marker)

    def check_parts(
        self, src: SourceConfig, parts: list[IngestPart], needed: list[str], kinds: dict
    ) -> list[str]:
        """Every file's schema (:func:`check_parquet_files`)."""
        return check_parquet_files(parquet_files(src.path), needed, kinds)

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """The partition's row groups (every file's when ``part`` is None) in batches."""
        if part is None:
            slices = [(f, None) for f in parquet_files(src.path)]
        else:
            slices = list(zip(part.files, part.row_groups or [None] * len(part.files), strict=True))
        for path, groups in slices:
            pf = pq.ParquetFile(open_random(path), pre_buffer=False)
            missing = [c for c in needed if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"Parquet file {path!r} lacks column(s) {missing}")
            yield from pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=needed)


READER = ParquetReader()
