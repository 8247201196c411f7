"""CSV files (gzip too; one, a folder or prefix of them, or a glob): read in blocks of lines
that parse on every core at once (:mod:`tasks.io.readers.lines_base`), the delimiter sniffed
from the first file, every file's header checked against it before any row is read."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.errors import ConfigError
from tasks.io.readers.base import IngestPart, Parsed, file_stats, open_bytes
from tasks.io.readers.lines_base import LineFilesReader, check_first_line

if TYPE_CHECKING:
    from tasks.config import SourceConfig

log = logging.getLogger(__name__)
DELIMITERS = ",;\t|"  # what source.delimiter: auto chooses among
SNIFF_BYTES = 64 << 10  # the first bytes the choice is made on


def _parse_block(block: bytes, names: list[str], delimiter: str, quote_char: str | None) -> Parsed:
    """Parse one block of lines on this thread. Bytes that are not UTF-8 are
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


def _say_delimiter(src: SourceConfig, path: str, delimiter: str) -> None:
    """Say the sniffed delimiter in the run's log, once a flow run (the checks before it
    and its plan both read the header)."""
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run

    from tasks.logs import run_logger

    if FlowRunContext.get() is None:
        return  # no run's log to say it in (a check before the flow starts)
    ((size, mtime_ns),) = file_stats([path])
    key = (path, size, mtime_ns, flow_run.root_flow_run_id)
    if key in _SAID:
        return
    _SAID.add(key)
    how = _sniffed(path, size, mtime_ns, src.encoding)[1]
    run_logger(log).info(
        "CSV delimiter of %r: %r (%s; set source.delimiter to choose another)",
        path,
        delimiter,
        how,
    )


def delimiter_of(src: SourceConfig, path: str) -> str:
    """The CSV delimiter: ``source.delimiter``, or the one sniffed in ``path`` (the source's
    first file) when it is ``auto``."""
    if src.delimiter != "auto":
        return src.delimiter
    ((size, mtime_ns),) = file_stats([path])
    return _sniffed(path, size, mtime_ns, src.encoding)[0]


class CsvReader(LineFilesReader):
    """CSV files: one partition, or with an entity id files and byte ranges of about
    ``partition_rows`` rows; blocks parsed in parallel."""

    name = "csv"
    suffixes = (".csv", ".tsv", ".txt", ".data", ".csv.gz", ".tsv.gz")
    folder_suffixes = frozenset({".csv", ".tsv"})
    folder_noun = "CSV files"
    text_values = True

    def header(self, src: SourceConfig) -> bool:
        """``source.header``: every file starts with the same header line."""
        return src.header

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The first file's header names (``col_0``, ... without a header)."""
        path = self.first_file(src)
        names = _header(src, path, True)
        inside = [d for d in DELIMITERS if len(names) == 1 and d in names[0]]
        if inside:  # a file of another dialect would train on one text column
            raise ConfigError(
                f"{path!r} parses to one column named {names[0][:60]!r} with delimiter "
                f"{delimiter_of(src, path)!r}, and that name holds {inside[0]!r}: set "
                f"source.delimiter to {inside[0]!r} (--delimiter {inside[0]!r})"
            )
        broken = [n for n in names if "\n" in n or "\r" in n]
        if broken:  # rows end at line ends: the header's second line would be read as a row
            raise ConfigError(
                f"the CSV header of {path!r} has a line break inside the quoted column "
                f"name {broken[0]!r}; aepipe reads one header line: rename the column"
            )
        return names

    def check_parts(
        self, src: SourceConfig, parts: list[IngestPart], needed: list[str], kinds: dict
    ) -> list[str]:
        """Every file of the partitions has the first file's header: the same columns in
        the same order (blocks are parsed by position, so another order would swap values).
        Raises ValueError naming the file and what differs."""
        files = list(dict.fromkeys(f for part in parts for f in part.files))
        if len(files) < 2 or not src.header:
            return []
        first = self.first_file(src)
        delimiter = delimiter_of(src, first)  # the first file's: the one its blocks parse with
        expected = _header(src, first, False, delimiter)
        for path in files:
            if path == first:
                continue
            got = _header(src, path, False, delimiter)
            if got != expected:
                missing = [c for c in expected if c not in got]
                extra = [c for c in got if c not in expected]
                what = (
                    f"lacks {missing} and has {extra}"
                    if missing or extra
                    else "has the same columns in another order"
                )
                raise ValueError(
                    f"CSV file {path!r} {what} beside {first!r}: every file of a CSV source "
                    "needs the same header (ingest the new shape as another data set)"
                )
        return []

    def context(self, src: SourceConfig) -> str:
        """The delimiter, the first file's for every file (looked up once a read)."""
        return delimiter_of(src, self.first_file(src))

    def piece(self, block: bytes, context: Any) -> tuple[bytes, str]:
        """A block with the delimiter."""
        return block, context

    def parse(self, item: Any, columns: list[str], src: SourceConfig) -> Parsed:
        """A block's lines as text columns (:func:`_parse_block`)."""
        block, delimiter = item
        return _parse_block(block, columns, delimiter, src.quote_char)


def _header(src: SourceConfig, path: str, say: bool, delimiter: str | None = None) -> list[str]:
    """The header names of the CSV file ``path`` (``col_0``, ... without a header), split
    at ``delimiter`` (else the one of ``path``: said in the run's log when ``say``)."""
    import pandas as pd

    try:
        check_first_line(path, src.header)
        delimiter = delimiter or delimiter_of(src, path)
        if say and src.delimiter == "auto":
            _say_delimiter(src, path, delimiter)
        with open_bytes(path) as fh:
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
        raise ConfigError(f"cannot read CSV header of {path!r}: {first}") from None
    if not src.header:
        return [f"col_{i}" for i in range(len(head.columns))]
    return [str(c).strip() for c in head.columns]


READER = CsvReader()
