"""What the readers of text files of lines (CSV, JSON lines) share: a file, every such file
under a folder or an object-store prefix, or a glob; blocks of whole lines that parse on
every core at once, a line too long to hold set aside unread; partitions of whole files or,
for a large uncompressed file, of byte ranges that start and end at line ends; and, for a
folder, incremental reads of the files newer than the last read's."""

from __future__ import annotations

import codecs
import glob
import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.io.readers.base import (
    FileSetReader,
    FileStart,
    IncrementalUnavailable,
    IngestPart,
    ReadPlan,
    Skipped,
    file_stats,
    files_since,
    is_folder,
    is_remote,
    list_files,
    open_bytes,
    open_seekable,
)

if TYPE_CHECKING:
    from tasks.config import SourceConfig

BLOCK_BYTES = 4 << 20  # bytes one worker parses at a time
KIND_SAMPLE_BYTES = 1 << 20  # bytes whose values decide the column kinds
MAX_LINE_BYTES = 16 << 20  # a longer line is set aside unread, not held in memory
MIN_PART_BYTES = 1 << 20  # a partition reads at least this much (a task has its costs)
SPLIT_ENCODINGS = ("utf-8", "ascii")  # a line end is the byte b"\n" in these: files split


@dataclass(frozen=True)
class _LongLine:
    """A line over :data:`MAX_LINE_BYTES`, skipped unparsed: its 1-based number (in its
    byte range, for a range that does not start the file), its length in bytes and its
    first bytes (for the quarantine's reason)."""

    number: int
    length: int
    head: bytes

    def reason(self) -> str:
        return (
            f"line of {self.length:,} bytes, longer than the {MAX_LINE_BYTES:,}-byte limit: "
            f"{self.head[:80].decode('utf-8', 'replace')!r}"
        )


def _open_range(path: str, span: tuple[int, int] | None) -> tuple[Any, int | None]:
    """The file opened at the start of ``span`` (decompressed when gzip, whole when None),
    and how many bytes of it to read (None: to its end)."""
    if span is None:
        return open_bytes(path), None
    f = open_seekable(path)
    f.seek(span[0])
    return f, span[1] - span[0]


def _csv_blocks(
    path: str,
    header: bool,
    encoding: str,
    block_bytes: int | None = None,
    span: tuple[int, int] | None = None,
) -> Iterator[bytes | _LongLine]:
    """The file's data lines (the header line dropped, when the read starts the file) as
    UTF-8 blocks of about :data:`BLOCK_BYTES`, each ending at a line end, streamed (gzip
    too); ``span``: only the bytes in that range, which starts and ends at line ends. Text
    in another encoding is transcoded here. A block parses on its own because a line end
    always ends a row in aepipe's options (pyarrow's ``newlines_in_values`` is off), so
    blocks parse in parallel and give the rows the whole file gives, in the same order. A
    line longer than :data:`MAX_LINE_BYTES` is read past in blocks and yielded as a
    :class:`_LongLine`, so memory stays bounded whatever one line holds."""
    size = block_bytes or BLOCK_BYTES
    f, left = _open_range(path, span)
    with f:
        raw_read = f.read
        if left is not None:

            def raw_read(n: int, read=f.read) -> bytes:
                nonlocal left
                data = read(min(n, left))
                left -= len(data)
                return data

        read = raw_read
        if codecs.lookup(encoding).name != "utf-8":
            text = io.TextIOWrapper(f, encoding=encoding, newline="")

            def read(n: int) -> bytes:
                return text.read(n).encode("utf-8")

        skip = header and (span is None or span[0] == 0)
        rest, line = b"", 1  # line: the number of the first line in rest
        while True:  # (a byte order mark starts the first block: pyarrow skips it)
            data = read(size)
            end = not data
            data = rest + data
            if skip:
                nl = data.find(b"\n")
                if nl < 0 and not end:
                    rest = data
                    continue
                data = b"" if nl < 0 else data[nl + 1 :]
                skip, line = False, 2
            cut = len(data) if end else data.rfind(b"\n") + 1
            if cut == 0 and len(data) > MAX_LINE_BYTES:
                long, rest, end = _skip_line(data, read, size, line)
                yield long
                line += 1
                if end:
                    return
                continue
            block, rest = data[:cut], data[cut:]
            if block and not block.isspace():
                yield block
            line += block.count(b"\n")
            if end:
                return


def _skip_line(
    start: bytes, read: Callable[[int], bytes], size: int, number: int
) -> tuple[_LongLine, bytes, bool]:
    """Read past the rest of a line that began with ``start`` (no line end in it): the line
    as a :class:`_LongLine`, the bytes after its end, and whether the file ended first."""
    length = len(start)
    while data := read(size):
        nl = data.find(b"\n")
        if nl >= 0:
            return _LongLine(number, length + nl + 1, start[:200]), data[nl + 1 :], False
        length += len(data)
    return _LongLine(number, length, start[:200]), b"", True


def line_numbers(path: str, texts: list[str], encoding: str, start: int = 0) -> list[int | None]:
    """The 1-based line numbers in the file of ``texts`` (whole lines, in file order, found
    from byte ``start`` on): one extra pass, made only when some rows were ragged. A text
    not found gives None."""
    found: list[int | None] = [None] * len(texts)
    number = 0
    if start:
        with open_bytes(path) as f:  # the lines before the range, counted
            left = start
            while left and (data := f.read(min(left, 4 << 20))):
                number += data.count(b"\n")
                left -= len(data)
    wanted = 0
    raw = open_bytes(path) if not start else open_seekable(path)
    if start:
        raw.seek(start)  # (a range of an uncompressed file: gzip files are read whole)
    with raw, io.TextIOWrapper(raw, encoding, errors="replace", newline="") as f:
        starts = True  # the next piece starts a line
        while wanted < len(texts) and (piece := f.readline(MAX_LINE_BYTES)):
            if starts:  # (a line too long to be ragged is read in pieces, never whole)
                number += 1
                if piece.rstrip("\r\n") == texts[wanted]:
                    found[wanted] = number
                    wanted += 1
            starts = piece.endswith(("\n", "\r"))
    return found


def line_blocks(
    path: str,
    header: bool,
    encoding: str,
    sample: bool,
    span: tuple[int, int] | None = None,
    where: str = "",
) -> Iterator[bytes | Skipped]:
    """A text file's blocks of whole lines (:func:`_csv_blocks`; its first megabyte when
    ``sample``), lines too long to hold as :class:`Skipped` rows (located ``where``: the
    file, when the source has several)."""
    size = KIND_SAMPLE_BYTES if sample else None
    for block in _csv_blocks(path, header, encoding, size, span):
        if isinstance(block, _LongLine):
            line = f"line {block.number}"
            if span is not None and span[0] > 0:
                line = f"line {block.number} of the range"
            yield Skipped(f"{where} {line}" if where else line, block.reason())
        else:
            yield block


def check_first_line(path: str, header: bool = True) -> None:
    """A ConfigError when the file's first line (gzip too) runs past :data:`MAX_LINE_BYTES`
    bytes: no CSV header, and pandas would hold it whole to find out; or when a file with a
    ``header`` holds nothing after it (said here, before a Prefect server is started for a
    run that has nothing to read)."""
    from tasks.errors import ConfigError

    with open_bytes(path) as f:
        head = f.read(MAX_LINE_BYTES + 1)
    if len(head) > MAX_LINE_BYTES and b"\n" not in head:
        raise ConfigError(
            f"the first line of {path!r} is longer than {MAX_LINE_BYTES:,} bytes: not a CSV "
            "header aepipe can read"
        )
    first, _, rest = head.partition(b"\n")
    if header and len(head) <= MAX_LINE_BYTES and first.strip() and not rest.strip():
        raise ConfigError(f"source {path!r} has no rows (only its header line)")


def line_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files behind a source of lines: one file, every file with one of ``suffixes``
    under a folder or an object-store prefix (sorted by name), or a glob's matches."""
    if is_folder(path):
        return [f for f in list_files(path) if f.lower().endswith(suffixes)]
    if not is_remote(path) and any(ch in path for ch in "*?["):
        return sorted(glob.glob(path, recursive=True))
    return [path]


def _cuts(path: str, size: int, span_bytes: int) -> list[int]:
    """Offsets that split an uncompressed file into ranges of about ``span_bytes``, each
    just after a line end (the first 0, the last the file's size)."""
    cuts = [0]
    with open_seekable(path) as f:
        at = span_bytes
        while at < size:
            f.seek(at)
            data = f.read(1 << 16)
            while data and b"\n" not in data:  # a long line: read on to its end
                at += len(data)
                data = f.read(1 << 16)
            if not data:
                break
            at += data.index(b"\n") + 1
            if at < size:
                cuts.append(at)
            at += span_bytes
    return [*cuts, size]


def _bytes_per_row(path: str) -> float:
    """The average line length of the file's first megabyte (decompressed)."""
    with open_bytes(path) as f:
        head = f.read(KIND_SAMPLE_BYTES)
    return max(1.0, len(head) / max(1, head.count(b"\n")))


class LineFilesReader(FileSetReader):
    """Files of lines: one file, a folder or prefix of them, or a glob. With an entity id
    the files are partitioned (whole files grouped to about ``partition_rows`` rows, a
    larger uncompressed file in byte ranges); without one a single partition reads every
    file in order, since default ids are row numbers counted across the files."""

    def header(self, src: SourceConfig) -> bool:
        """Whether every file starts with a header line."""
        return False

    def source_files(self, src: SourceConfig) -> list[str]:
        """The files the source reads, in order."""
        return line_files(src.path, self.suffixes)

    def first_file(self, src: SourceConfig) -> str:
        """The file whose first lines name and type the columns."""
        from tasks.errors import ConfigError

        files = self.source_files(src)
        if not files:
            raise ConfigError(f"no {self.name} files match {src.path!r}")
        return files[0]

    def plan(
        self,
        src: SourceConfig,
        partition_rows: int,
        listing: list[str] | None = None,
        since: str | None = None,
    ) -> ReadPlan:
        """Partitions of about ``partition_rows`` rows (with an entity id); with ``since``
        (from :meth:`marker`), of a folder's files written after the last read's only."""
        files = self.source_files(src)
        marker = None
        if is_folder(src.path):
            files, marker = files_since(src.path, files, since)
        elif since is not None:
            raise IncrementalUnavailable(f"a single {self.name} file or a glob is read whole")
        if not files:
            return ReadPlan([IngestPart(0, [])], marker=marker)
        if not src.entity_id:
            return ReadPlan([IngestPart(0, files)], marker=marker)
        span_bytes = max(MIN_PART_BYTES, int(partition_rows * _bytes_per_row(files[0])))
        split = codecs.lookup(src.encoding).name in SPLIT_ENCODINGS
        return ReadPlan(_parts(files, span_bytes, split), marker=marker)

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[Any]:
        """Blocks of lines of the partition's files (the first file's first megabyte when
        ``sample``), each file's announced by a :class:`FileStart` when the source has
        several, lines too long set aside."""
        if sample or part is None:
            files = [self.first_file(src)] if sample else self.source_files(src)
            spans: list[tuple[int, int] | None] = [None] * len(files)
        else:
            files, spans = part.files, list(part.ranges or [None] * len(part.files))
        several = not sample and (  # more than the one file the source names: say which
            len(files) > 1
            or (part is not None and (part.ranges is not None or files != [src.path]))
        )
        context = None if not files else self.context(src)
        for path, span in zip(files, spans, strict=True):
            where = ""
            if several:
                where = Path(path).name + (f" bytes {span[0]}-{span[1]}" if span else "")
                yield FileStart(path, span[0] if span else 0, where)
            for block in line_blocks(path, self.header(src), src.encoding, sample, span, where):
                yield block if isinstance(block, Skipped) else self.piece(block, context)
            if sample:
                return

    def context(self, src: SourceConfig) -> Any:
        """What every block's parse needs of the source, looked up once a read (None)."""
        return None

    def piece(self, block: bytes, context: Any) -> Any:
        """What :meth:`parse` takes of a block (the block, by default)."""
        return block

    def locate(self, src: SourceConfig, path: str, start: int, texts: list[str]) -> list:
        """Ragged lines' numbers in ``path`` (searched from byte ``start``), in one more
        pass over it."""
        return line_numbers(path, texts, src.encoding, start)


def _parts(files: list[str], span_bytes: int, split: bool) -> list[IngestPart]:
    """Whole files grouped to about ``span_bytes`` a partition; an uncompressed file larger
    than that (when ``split``) in byte ranges of its own."""
    parts: list[IngestPart] = []
    group: list[str] = []
    held = 0

    def close() -> None:
        nonlocal group, held
        if group:
            parts.append(IngestPart(len(parts), group))
        group, held = [], 0

    for path, (size, _) in zip(files, file_stats(files), strict=True):
        if split and size > span_bytes and not path.lower().endswith(".gz"):
            close()
            cuts = _cuts(path, size, span_bytes)
            for a, b in itertools.pairwise(cuts):
                parts.append(IngestPart(len(parts), [path], ranges=[(a, b)]))
            continue
        if group and held + size > span_bytes:
            close()
        group.append(path)
        held += size
    close()
    return parts
