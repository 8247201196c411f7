"""Streaming reads of tables (CSV, Parquet file / folder / glob) with per-row checks.

Rows arrive in batches of typed pandas frames; rows that cannot be used (ragged CSV lines,
text in a numeric column, infinite values, unparseable timestamps, duplicate entity ids) are
set aside with their location and reason instead of failing the run. Column types are
decided from the first batch: a column is numeric (or boolean) when at least 80 % of its
values there parse as such; the rest of its rows are then quarantined, not the column lost.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BATCH_ROWS = 65_536
TYPE_SHARE = 0.8  # share of a column's first-batch values that decides its type
TRUE_WORDS, FALSE_WORDS = {"true", "t", "yes"}, {"false", "f", "no"}


@dataclass
class Chunk:
    """One batch of usable rows and the rows of that batch that were set aside."""

    frame: pd.DataFrame
    positions: np.ndarray  # source row number of each usable row
    quarantine: list[tuple[str, str]] = field(default_factory=list)


def parquet_files(path: str) -> list[str]:
    """Files behind a Parquet source: one file, every ``*.parquet`` under a folder, or a glob."""
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in (".parquet", ".pq"))
    if any(ch in path for ch in "*?["):
        return sorted(glob.glob(path, recursive=True))
    return [path]


def type_class(t: pa.DataType) -> str:
    """What a Parquet column holds, as far as aepipe's column kinds care: ``number``,
    ``boolean``, ``text``, ``time``, ``null`` (all missing), or the type itself."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_temporal(t):
        return "time"
    return str(t)


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
        schema = pq.read_schema(path)
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


class _Utf8Repair(io.RawIOBase):
    """A CSV file's bytes with every sequence that is not UTF-8 replaced by U+FFFD.

    pyarrow decodes a ragged row's text before it calls the invalid-row handler, and fails
    the whole file when that text is not UTF-8; repaired bytes keep such rows skippable.
    ``repaired`` turns true once something was replaced: from then on, values holding
    U+FFFD are set aside as not UTF-8. Costs one decode and encode pass in C.
    """

    def __init__(self, path: str) -> None:
        opener = gzip.open if path.lower().endswith(".gz") else open
        self._file = opener(path, "rb")
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = b""
        self._eof = False
        self.repaired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._eof:
            data = self._file.read(max(len(buffer), 1 << 16))
            self._eof = not data
            text = self._decoder.decode(data, final=self._eof)
            out = text.encode("utf-8")
            held = len(self._decoder.getstate()[0])
            if not self.repaired and out != data[: len(data) - held]:
                self.repaired = True
            self._pending = out
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _csv_batches(
    path: str,
    delimiter: str,
    quote_char: str | None,
    header: bool,
    names: list[str],
    ragged: list[tuple[str, str]],
    encoding: str = "utf-8",
    repair: _Utf8Repair | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of string columns; ragged rows are skipped into ``ragged``. UTF-8
    text is read through ``repair`` (other encodings pyarrow transcodes itself)."""
    import pyarrow.csv as pacsv

    unnumbered: list[tuple[int, str]] = []  # (index in ragged, the row's text)

    def on_invalid(row) -> str:
        # pyarrow's streaming reader does not know line numbers: found after the read
        if row.number in (None, -1):
            unnumbered.append((len(ragged), row.text))
        where = f"line {row.number}" if row.number not in (None, -1) else "ragged line"
        ragged.append(
            (
                where,
                f"expected {row.expected_columns} fields, got "
                f"{row.actual_columns}: {row.text[:80]!r}",
            )
        )
        return "skip"

    reader = pacsv.open_csv(
        repair if repair is not None else path,
        read_options=pacsv.ReadOptions(
            block_size=1 << 22,
            column_names=names,
            skip_rows=1 if header else 0,
            encoding=encoding,
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
    yield from reader
    if unnumbered:
        for (index, _), number in zip(
            unnumbered, _line_numbers(path, [t for _, t in unnumbered], encoding), strict=True
        ):
            if number is not None:
                ragged[index] = (f"line {number}", ragged[index][1])


def _line_numbers(path: str, texts: list[str], encoding: str) -> list[int | None]:
    """The 1-based line numbers of ``texts`` (whole lines, in file order) in the file: one
    extra pass, made only when some rows were ragged. A text not found gives None."""
    import gzip

    found: list[int | None] = [None] * len(texts)
    wanted = 0
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding=encoding, errors="replace", newline="") as f:
        for number, line in enumerate(f, start=1):
            if wanted == len(texts):
                break
            if line.rstrip("\r\n") == texts[wanted]:
                found[wanted] = number
                wanted += 1
    return found


class _Rejects:
    """Rows of one batch set aside so far, each with the first reason found."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reasons: dict[int, str] = {}

    def add(self, mask: np.ndarray, reason_of) -> None:
        for i in np.flatnonzero(mask & ~self.bad):
            self.reasons[int(i)] = reason_of(int(i))
        self.bad |= mask


class TableReader:
    """Reads a table source in batches, typing columns and quarantining unusable rows."""

    def __init__(
        self,
        src,
        columns: list[str],
        features: list[str],
        label: str | None,
        slices: list[tuple[str, list[int] | None]] | None = None,
        first_row: int = 0,
        kinds: dict[str, str] | None = None,
    ) -> None:
        """Read ``slices`` of a Parquet source ((file, row groups or None for all) pairs; the
        whole source when None) whose first row is source row ``first_row``, with the column
        ``kinds`` already decided (else from the first batch)."""
        self.src, self.columns, self.features, self.label = src, columns, features, label
        self.slices, self.first_row = slices, first_row
        self.kinds: dict[str, str] = dict(kinds or {})
        self.seen_ids: set[str] = set()  # keys of rows kept so far
        self.rows_in = 0
        self.ragged: list[tuple[str, str]] = []

    def _parquet_batches(self) -> Iterator[pa.RecordBatch]:
        src = self.src
        wanted = [src.entity_id, src.timestamp, self.label, *self.features]
        needed = list(dict.fromkeys(c for c in wanted if c))
        slices = self.slices or [(f, None) for f in parquet_files(src.path)]
        for path, groups in slices:
            pf = pq.ParquetFile(path, pre_buffer=False)
            missing = [c for c in needed if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"Parquet file {path!r} lacks column(s) {missing}")
            yield from pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=needed)

    def decide_kinds(self) -> dict[str, str]:
        """Numeric, boolean or categorical per feature column, from the first batch."""
        for cols, _ in self._raw_batches():
            self._decide_kinds(cols)
            break
        return self.kinds

    def _raw_batches(self) -> Iterator[tuple[dict[str, pa.Array], list[tuple[str, np.ndarray]]]]:
        """Each batch's columns (text trimmed, ``na_values`` as nulls) and, per column that
        had them, a mask of values that were not UTF-8 (nulls now; their rows are set aside)."""
        src = self.src
        repair = None
        if src.resolved_format == "csv":
            repair = _Utf8Repair(src.path) if src.encoding == "utf-8" else None
            batches = _csv_batches(
                src.path,
                src.delimiter,
                src.quote_char,
                src.header,
                self.columns,
                self.ragged,
                src.encoding,
                repair,
            )
        else:
            batches = self._parquet_batches()
        try:
            yield from self._cleaned(batches, repair)
        finally:  # also when a caller stops early (decide_kinds reads one batch)
            if repair is not None:
                repair.close()

    def _cleaned(
        self, batches: Iterator[pa.RecordBatch], repair: _Utf8Repair | None
    ) -> Iterator[tuple[dict[str, pa.Array], list[tuple[str, np.ndarray]]]]:
        src = self.src
        na = pa.array(list(src.na_values), pa.string())
        for batch in batches:
            cols = {}
            not_utf8: list[tuple[str, np.ndarray]] = []
            for name, arr in zip(batch.schema.names, batch.columns, strict=True):
                if repair is not None and repair.repaired and pa.types.is_string(arr.type):
                    invalid = _mask(pc.match_substring(arr, "\ufffd"))
                    if invalid.any():
                        not_utf8.append((name, invalid))
                        arr = pc.if_else(pa.array(invalid), pa.scalar(None, arr.type), arr)
                if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                    if src.skip_initial_space:
                        arr = pc.utf8_trim_whitespace(arr)
                    arr = pc.if_else(pc.is_in(arr, value_set=na), pa.scalar(None, arr.type), arr)
                cols[name] = arr
            yield cols, not_utf8

    def _decide_kinds(self, cols: dict[str, pa.Array]) -> None:
        for col in self.features:
            arr = cols[col]
            if pa.types.is_boolean(arr.type):
                self.kinds[col] = "bool"
            elif (
                pa.types.is_integer(arr.type)
                or pa.types.is_floating(arr.type)
                or pa.types.is_null(arr.type)
                or arr.null_count == len(arr)
            ):
                self.kinds[col] = "num"
            elif _share(_is_bool_word(arr), arr) >= TYPE_SHARE:
                self.kinds[col] = "bool"
            elif _share(_is_number(arr), arr) >= TYPE_SHARE:
                self.kinds[col] = "num"
            else:
                self.kinds[col] = "cat"

    def chunks(self) -> Iterator[Chunk]:
        """Typed batches of usable rows, each with the rows it set aside."""
        src = self.src
        start = self.first_row
        for cols, not_utf8 in self._raw_batches():
            if not self.kinds:
                self._decide_kinds(cols)
            n = len(next(iter(cols.values()))) if cols else 0
            positions = np.arange(start, start + n)
            start += n
            self.rows_in += n
            rejects = _Rejects(n)
            flag = rejects.add
            for col, invalid in not_utf8:
                flag(
                    invalid,
                    lambda i, c=col: (
                        f"column {c!r} holds bytes that are not UTF-8 (set source.encoding "
                        "if the file uses another encoding)"
                    ),
                )

            typed: dict[str, pd.Series] = {}
            for col in self.features:
                arr = orig = cols[col]
                kind = self.kinds[col]
                text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
                if kind == "num":
                    if text:
                        ok = _is_number(arr)
                        flag(
                            _mask(pc.and_(arr.is_valid(), pc.invert(ok))),
                            lambda i, c=col, a=arr: (
                                f"column {c!r} has non-numeric value {a[i].as_py()!r}"
                            ),
                        )
                        arr = pc.cast(pc.if_else(ok, arr, pa.scalar(None, arr.type)), pa.float64())
                    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
                    flag(
                        np.isinf(values),
                        lambda i, c=col, a=orig: (
                            f"column {c!r} has a non-finite value {a[i].as_py()!r}"
                        ),
                    )
                    typed[col] = pd.Series(values, dtype="float64")
                elif kind == "bool":
                    if text:
                        low = pc.utf8_lower(arr)
                        flag(
                            _mask(pc.and_(arr.is_valid(), pc.invert(_is_bool_word(arr)))),
                            lambda i, c=col, a=arr: (
                                f"column {c!r} has non-boolean value {a[i].as_py()!r}"
                            ),
                        )
                        arr = pc.if_else(
                            arr.is_valid(),
                            pc.is_in(low, value_set=TRUE_SET),
                            pa.scalar(None, pa.bool_()),
                        )
                    typed[col] = arr.to_pandas().astype("boolean")
                else:
                    typed[col] = arr.cast(pa.string()).to_pandas().astype("string")
            ids = (
                cols[src.entity_id].cast(pa.string()).to_pandas().astype("string")
                if src.entity_id
                else pd.Series(positions.astype(str), dtype="string")
            )
            ts = None
            if src.timestamp:
                raw_ts = cols[src.timestamp].to_pandas()
                ts = pd.to_datetime(raw_ts, utc=True, errors="coerce", format="mixed")
                flag(
                    ts.isna().to_numpy(),
                    lambda i, t=raw_ts: f"timestamp {t.iloc[i]!r} cannot be parsed",
                )
            if src.entity_id:  # row numbers are unique by construction; given ids may not be
                id_missing = ids.isna().to_numpy()
                flag(id_missing, lambda i: "missing entity id")
                live = ~id_missing & ~rejects.bad
                # the key: the id, or (id, event time) when the source has versions over time
                keys = ids if ts is None else version_keys(ids, ts)
                dup = live & (keys.duplicated().to_numpy() | keys.isin(self.seen_ids).to_numpy())
                flag(dup, lambda i, ids=ids, ts=ts: duplicate_reason(ids.iloc[i], ts, i))
                self.seen_ids.update(keys[live & ~dup].tolist())
            out = pd.DataFrame(typed)
            out.insert(0, "__id", ids)
            if ts is not None:
                out.insert(1, "__ts", ts)
            if self.label:
                label = cols[self.label]
                out.insert(
                    len(out.columns) - len(self.features),
                    "__label",
                    label.cast(pa.string()).to_pandas()
                    if src.resolved_format == "csv"
                    else label.to_pandas(),
                )
            keep = ~rejects.bad
            quarantine = [(f"row {positions[i]}", r) for i, r in sorted(rejects.reasons.items())]
            yield Chunk(out[keep].reset_index(drop=True), positions[keep], quarantine)


def version_keys(ids: pd.Series, ts: pd.Series) -> pd.Series:
    """One text key per (entity id, event time) pair: what makes a row a distinct version of
    its entity when the source names a timestamp column."""
    micros = ts.fillna(pd.Timestamp(0, tz="UTC")).dt.as_unit("us").astype("int64")
    return ids.astype("string") + "\x1f" + micros.astype("string")


def duplicate_reason(entity: str, ts: pd.Series | None, i: int) -> str:
    """The quarantine reason of a repeated key: the id, and its event time when it has one."""
    if ts is None:
        return f"duplicate entity id {entity!r}"
    return f"duplicate entity id {entity!r} at {ts.iloc[i].isoformat()}"


NUMBER = (
    r"^[+-]?(([0-9]+([.][0-9]*)?)|([.][0-9]+))([eE][+-]?[0-9]+)?$"
    r"|^[+-]?(inf|infinity|nan)$"
)
TRUE_SET = pa.array(sorted(TRUE_WORDS), pa.string())
BOOL_SET = pa.array(sorted(TRUE_WORDS | FALSE_WORDS), pa.string())


def _is_number(arr: pa.Array) -> pa.Array:
    """Boolean array: the text parses as a number (nulls give null). A column of plain ASCII
    digit strings (integers, the common case) skips the regular expression, 10x dearer."""
    digits = pc.ascii_is_decimal(arr)  # "" and nulls: not digits / null, as the regex gives
    if pc.all(digits).as_py() is not False:
        return digits
    return pc.match_substring_regex(arr, NUMBER, ignore_case=True)


def _is_bool_word(arr: pa.Array) -> pa.Array:
    return pc.is_in(pc.utf8_lower(arr), value_set=BOOL_SET)


def _mask(arr: pa.Array) -> np.ndarray:
    """A NumPy bool mask of an Arrow boolean array, nulls as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)


def _share(mask: pa.Array, arr: pa.Array) -> float:
    valid = len(arr) - arr.null_count
    return float(pc.sum(pc.fill_null(mask, False)).as_py() or 0) / valid if valid else 0.0
