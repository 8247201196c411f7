"""CSV files (gzip too): read in blocks of lines that parse on every core at once, a line too
long to hold set aside unread, the header checked before any row is read."""

from __future__ import annotations

import codecs
import functools
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.io.readers.base import (
    IngestPart,
    Parsed,
    Skipped,
    SourceReader,
    file_stats,
    open_bytes,
)

if TYPE_CHECKING:
    from tasks.config import SourceConfig

log = logging.getLogger(__name__)
DELIMITERS = ",;\t|"  # what source.delimiter: auto chooses among
SNIFF_BYTES = 64 << 10  # the first bytes the choice is made on

BLOCK_BYTES = 4 << 20  # CSV bytes one worker parses at a time
KIND_SAMPLE_BYTES = 1 << 20  # CSV bytes whose values decide the column kinds
MAX_LINE_BYTES = 16 << 20  # a longer CSV line is set aside unread, not held in memory


@dataclass(frozen=True)
class _LongLine:
    """A CSV line over :data:`MAX_LINE_BYTES`, skipped unparsed: its 1-based number, its
    length in bytes and its first bytes (for the quarantine's reason)."""

    number: int
    length: int
    head: bytes

    def reason(self) -> str:
        return (
            f"line of {self.length:,} bytes, longer than the {MAX_LINE_BYTES:,}-byte limit: "
            f"{self.head[:80].decode('utf-8', 'replace')!r}"
        )


def _csv_blocks(
    path: str, header: bool, encoding: str, block_bytes: int | None = None
) -> Iterator[bytes | _LongLine]:
    """The file's data lines (the header line dropped) as UTF-8 blocks of about
    :data:`BLOCK_BYTES`, each ending at a line end, streamed (gzip too). Text in another
    encoding is transcoded here. A block parses on its own because a line end always ends a
    row in aepipe's CSV options (pyarrow's ``newlines_in_values`` is off), so blocks parse
    in parallel and give the rows the whole file gives, in the same order. A line longer
    than :data:`MAX_LINE_BYTES` is read past in blocks and yielded as a :class:`_LongLine`,
    so memory stays bounded whatever one line holds."""
    size = block_bytes or BLOCK_BYTES
    with open_bytes(path) as f:
        read = f.read
        if codecs.lookup(encoding).name != "utf-8":
            text = io.TextIOWrapper(f, encoding=encoding, newline="")

            def read(n: int) -> bytes:
                return text.read(n).encode("utf-8")

        rest, skip, line = b"", header, 1  # line: the number of the first line in rest
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


def _parse_block(block: bytes, names: list[str], delimiter: str, quote_char: str | None) -> Parsed:
    """Parse one block of :func:`_csv_blocks` on this thread. Bytes that are not UTF-8 are
    replaced first (pyarrow decodes a ragged row's text before its handler sees it, and
    would fail the whole file), so such rows can be set aside one by one."""
    import pyarrow.csv as pacsv

    repaired = False
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        block, repaired = block.decode("utf-8", "replace").encode("utf-8"), True
    ragged: list[tuple[str, str]] = []

    def on_invalid(row) -> str:
        ragged.append(
            (f"expected {row.expected_columns} fields, got {row.actual_columns}", row.text)
        )
        return "skip"

    table = pacsv.read_csv(
        pa.py_buffer(block),
        read_options=pacsv.ReadOptions(  # one parser block: a line of any length parses
            use_threads=False, column_names=names, block_size=max(len(block), 1 << 20) + 1
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, quote_char=quote_char or False, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return Parsed(table, ragged, repaired)


def _line_numbers(path: str, texts: list[str], encoding: str) -> list[int | None]:
    """The 1-based line numbers of ``texts`` (whole lines, in file order) in the file: one
    extra pass, made only when some rows were ragged. A text not found gives None."""
    found: list[int | None] = [None] * len(texts)
    wanted = 0
    with io.TextIOWrapper(open_bytes(path), encoding, errors="replace", newline="") as f:
        number, starts = 0, True  # starts: the next piece starts a line
        while wanted < len(texts) and (piece := f.readline(MAX_LINE_BYTES)):
            if starts:  # (a line too long to be ragged is read in pieces, never whole)
                number += 1
                if piece.rstrip("\r\n") == texts[wanted]:
                    found[wanted] = number
                    wanted += 1
            starts = piece.endswith(("\n", "\r"))
    return found


def line_blocks(path: str, header: bool, encoding: str, sample: bool) -> Iterator[bytes | Skipped]:
    """A text file's blocks of whole lines (:func:`_csv_blocks`; its first megabyte when
    ``sample``), lines too long to hold as :class:`Skipped` rows."""
    size = KIND_SAMPLE_BYTES if sample else None
    for block in _csv_blocks(path, header, encoding, size):
        if isinstance(block, _LongLine):
            yield Skipped(f"line {block.number}", block.reason())
        else:
            yield block


def check_first_line(path: str, header: bool = True) -> None:
    """A ConfigError when the file's first line (gzip too) runs past :data:`MAX_LINE_BYTES`
    bytes: no CSV header, and pandas would hold it whole to find out; or when a file with a
    ``header`` holds nothing after it (said here, before a Prefect server is started for a
    run that has nothing to read)."""
    from tasks.config import ConfigError

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


@functools.lru_cache(maxsize=64)
def _sniffed(path: str, size: int, mtime_ns: int, encoding: str) -> tuple[str, str]:
    """The delimiter of the file's first lines (Python's ``csv.Sniffer`` among
    :data:`DELIMITERS`; a comma when it cannot tell) and how it was chosen. Keyed by the
    file's size and modification time, so a changed file is sniffed again."""
    import csv

    with open_bytes(path) as f:
        head = f.read(SNIFF_BYTES)
    text = head.decode(encoding, "replace")
    if len(head) == SNIFF_BYTES and "\n" in text:
        text = text[: text.rfind("\n")]  # whole lines only
    try:
        delimiter = csv.Sniffer().sniff(text, delimiters=DELIMITERS).delimiter
        how = "sniffed"
    except csv.Error:
        delimiter, how = ",", "the default: no other was consistent"
    return delimiter, how


_SAID: set[tuple] = set()  # (file, its stats, the flow run) whose sniffed delimiter was said


def _say_delimiter(src: SourceConfig, delimiter: str) -> None:
    """Say the sniffed delimiter in the run's log, once a flow run (the checks before it
    and its plan both read the header)."""
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run

    from tasks.config import run_logger

    if FlowRunContext.get() is None:
        return  # no run's log to say it in (a check before the flow starts)
    ((size, mtime_ns),) = file_stats([src.path])
    key = (src.path, size, mtime_ns, flow_run.root_flow_run_id)
    if key in _SAID:
        return
    _SAID.add(key)
    how = _sniffed(src.path, size, mtime_ns, src.encoding)[1]
    run_logger(log).info(
        "CSV delimiter of %r: %r (%s; set source.delimiter to choose another)",
        src.path,
        delimiter,
        how,
    )


def delimiter_of(src: SourceConfig) -> str:
    """The CSV delimiter: ``source.delimiter``, or the sniffed one when it is ``auto``."""
    if src.delimiter != "auto":
        return src.delimiter
    ((size, mtime_ns),) = file_stats([src.path])
    return _sniffed(src.path, size, mtime_ns, src.encoding)[0]


class CsvReader(SourceReader):
    """A CSV file: one partition, its blocks parsed in parallel."""

    name = "csv"
    suffixes = (".csv", ".tsv", ".txt", ".data", ".csv.gz", ".tsv.gz")
    text_values = True

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The header's names (``col_0``, ... without a header)."""
        import pandas as pd

        from tasks.config import ConfigError

        try:
            check_first_line(src.path, src.header)
            delimiter = delimiter_of(src)
            if src.delimiter == "auto":
                _say_delimiter(src, delimiter)
            with open_bytes(src.path) as fh:
                head = pd.read_csv(
                    fh,
                    sep=delimiter,
                    nrows=0 if src.header else 1,
                    header=0 if src.header else None,
                    skipinitialspace=src.skip_initial_space,
                    quotechar=src.quote_char or '"',
                    quoting=3 if src.quote_char is None else 0,
                    encoding=src.encoding,
                )
        except (
            pd.errors.EmptyDataError,
            UnicodeDecodeError,
            pd.errors.ParserError,
            OSError,
        ) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"cannot read CSV header of {src.path!r}: {first}") from None
        if not src.header:
            return [f"col_{i}" for i in range(len(head.columns))]
        names = [str(c).strip() for c in head.columns]
        inside = [d for d in DELIMITERS if len(names) == 1 and d in names[0]]
        if inside:  # a file of another dialect would train on one text column
            raise ConfigError(
                f"{src.path!r} parses to one column named {names[0][:60]!r} with delimiter "
                f"{delimiter!r}, and that name holds {inside[0]!r}: set source.delimiter to "
                f"{inside[0]!r} (--delimiter {inside[0]!r})"
            )
        broken = [n for n in names if "\n" in n or "\r" in n]
        if broken:  # rows end at line ends: the header's second line would be read as a row
            raise ConfigError(
                f"the CSV header of {src.path!r} has a line break inside the quoted column "
                f"name {broken[0]!r}; aepipe reads one header line: rename the column"
            )
        return names

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[tuple[bytes, str] | Skipped]:
        """Blocks of CSV lines (a megabyte when ``sample``), each with the delimiter (looked
        up once for the file, not once a block), lines too long set aside."""
        delimiter = delimiter_of(src)
        for block in line_blocks(src.path, src.header, src.encoding, sample):
            yield block if isinstance(block, Skipped) else (block, delimiter)

    def parse(self, item: Any, columns: list[str], src: SourceConfig) -> Parsed:
        """A block's lines as text columns (:func:`_parse_block`)."""
        block, delimiter = item
        return _parse_block(block, columns, delimiter, src.quote_char)

    def locate(self, src: SourceConfig, texts: list[str]) -> list[int | None]:
        """Ragged lines' numbers, found in one more pass over the file."""
        return _line_numbers(src.path, texts, src.encoding)


READER = CsvReader()
