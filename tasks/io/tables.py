"""Streaming reads of table sources with per-row checks, the same for every table reader
(:mod:`tasks.io.readers`): the reader hands over batches, this module types them.

Rows arrive in batches of typed Arrow columns; rows that cannot be used (ragged CSV lines,
text in a numeric column, infinite values, unparseable timestamps, duplicate entity ids) are
set aside with their location and reason instead of failing the run. Column types are
decided from the first batch (of a CSV, its first megabyte): a column is numeric (or
boolean) when at least 80 % of its values there parse as such; the rest of its rows are
then quarantined, not the column lost. A CSV is parsed in blocks on every core at once.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ae_models.training.cpus import usable_cpus
from tasks.io.readers.base import FileStart, IngestPart, Parsed, Skipped

T = TypeVar("T")
R = TypeVar("R")
BATCH_ROWS = 65_536
TYPE_SHARE = 0.8  # share of a column's first-batch values that decides its type
TRUE_WORDS, FALSE_WORDS = {"true", "t", "yes"}, {"false", "f", "no"}
# a column looks like an identifier, not a feature, when its first batch has at least
# ID_MIN_ROWS values and ID_SHARE of them are distinct: text, or whole numbers that count
# along (their span at most twice their number) under a name that says id (ID_NAME): a row
# number, an auto-increment key; a count that happens to be unique stays a feature
ID_MIN_ROWS, ID_SHARE = 100, 0.95
ID_NAME = re.compile(
    r"(^|[^a-z])(id|key|index|no|num|number)$|^unnamed: ?0$|(?-i:[a-z]I[dD])$", re.I
)


@dataclass
class Chunk:
    """One batch of usable rows and the rows of that batch that were set aside. ``table``
    holds ``__id`` (text), ``__ts`` (UTC times, when the source names a timestamp column),
    ``__label`` (when it names a label) and the features, typed: float64 numbers (missing
    as null), booleans, text."""

    table: pa.Table
    positions: np.ndarray  # source row number of each usable row
    quarantine: list[tuple[str, str]] = field(default_factory=list)


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


def _in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads (Arrow's kernels and the CSV parser
    release the GIL), results in input order, at most ``2 * workers`` items in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="aepipe-table") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a caller that stops early, or a failure: queued blocks are not parsed
            for future in pending:
                future.cancel()


def _prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items`` read ahead on a thread of their own, at most ``depth`` waiting: a source's
    reads (a database's batches, a file's blocks) overlap the work on the rows before them.
    An error in the reads is raised here, in order; a caller that stops early stops them."""
    import queue
    import threading

    done = object()
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(("end", done))
        except BaseException as err:  # handed to the consumer, raised there
            box.put(("error", err))

    reader = threading.Thread(target=read, name="aepipe-source-read", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting to put
            try:
                box.get_nowait()
            except queue.Empty:
                reader.join(0.05)


class _Rejects:
    """Rows of one batch set aside so far, each with the first reason found."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reasons: dict[int, str] = {}

    def add(self, mask: np.ndarray, reason_of) -> None:
        for i in np.flatnonzero(mask & ~self.bad):
            self.reasons[int(i)] = reason_of(int(i))
        self.bad |= mask


@dataclass
class _Block:
    """One batch checked and typed on a worker thread, before its rows are numbered: the
    typed columns (see :class:`Chunk`, ids aside), the given entity ids as text, rows
    rejected so far, ragged rows."""

    n: int
    columns: dict[str, pa.Array]
    ids: pa.Array | None
    rejects: _Rejects
    ragged: list[tuple[str, str]]
    skipped: Skipped | FileStart | None = None  # a row set aside unread, or a file's start


class TableReader:
    """Reads a table source in batches, typing columns and quarantining unusable rows.

    CSV blocks are parsed, cleaned, checked and typed on every core at once
    (:func:`_in_order`); the rows are numbered, their entity ids checked for duplicates and
    the batches handed on in file order."""

    def __init__(
        self,
        src,
        columns: list[str],
        features: list[str],
        label: str | None,
        part: IngestPart | None = None,
        kinds: dict[str, str] | None = None,
        workers: int | None = None,
    ) -> None:
        """Read ``part`` of the source (the whole source when None; its first row is source
        row ``part.first_row``), with the column ``kinds`` already decided (else from the
        first batch), on ``workers`` threads (the cores this process may use when None)."""
        from tasks.io.readers import reader_of

        self.src, self.columns, self.features, self.label = src, columns, features, label
        self.reader = reader_of(src)
        self.part, self.first_row = part, part.first_row if part is not None else 0
        self.kinds: dict[str, str] = dict(kinds or {})
        self.identifiers: dict[str, str] = {}  # feature columns that look like ids: why
        self.times: dict[str, str] = {}  # feature columns of times or dates: their type
        self.workers = workers or usable_cpus()
        self.rows_in = 0
        self.ragged: list[tuple[str, str]] = []

    def _items(self, sample: bool = False) -> Iterator[Any]:
        """What the workers take: the reader's record batches, raw pieces and skipped rows."""
        src = self.src
        wanted = [src.entity_id, src.timestamp, self.label, *self.features]
        needed = list(dict.fromkeys(c for c in wanted if c))
        return self.reader.items(src, self.part, needed, sample)

    def _cleaned(self, item: Any) -> tuple[dict[str, pa.Array], Parsed]:
        """A batch's columns (text trimmed, ``na_values`` as nulls; raw pieces parsed by the
        reader first; values that were not UTF-8 as nulls, their rows set aside by
        :meth:`_typed`)."""
        src = self.src
        parsed = self.reader.parse(item, self.columns, src)
        na = pa.array(list(src.na_values), pa.string())
        cols = {}
        for name, arr in zip(parsed.table.column_names, parsed.table.columns, strict=True):
            arr = arr.combine_chunks()
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                if src.skip_initial_space:  # spaces, tabs: ASCII (3x faster than Unicode's)
                    arr = pc.ascii_trim_whitespace(arr)
                missing = pc.is_in(arr, value_set=na)
                if pc.any(missing).as_py():
                    arr = pc.if_else(missing, pa.scalar(None, arr.type), arr)
            cols[name] = arr
        return cols, parsed

    def decide_kinds(self) -> dict[str, str]:
        """Numeric, boolean or categorical per feature column, from the first batch (of a
        CSV: its first megabyte)."""
        for item in self._items(sample=True):
            if not isinstance(item, (Skipped, FileStart)):
                self._decide_kinds(self._cleaned(item)[0])
                break
        return self.kinds

    def _decide_kinds(self, cols: dict[str, pa.Array]) -> None:
        for col in self.features:
            arr = cols[col]
            if pa.types.is_temporal(arr.type):  # no kind encodes a time: said, left out
                self.times[col] = str(arr.type)
                continue
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
            why = _identifier_like(arr, self.kinds[col], col)
            if why:
                self.identifiers[col] = why

    def _typed(self, item: Any) -> _Block:
        """Parse (CSV), clean, check and type one batch: runs on a worker thread."""
        if isinstance(item, (Skipped, FileStart)):
            return _Block(0, {}, None, _Rejects(0), [], item)
        src = self.src
        cols, parsed = self._cleaned(item)
        n = parsed.table.num_rows
        rejects = _Rejects(n)
        flag = rejects.add
        if parsed.repaired:
            for name, arr in cols.items():
                if not pa.types.is_string(arr.type):
                    continue
                invalid = _mask(pc.match_substring(arr, "\ufffd"))
                if invalid.any():
                    cols[name] = pc.if_else(pa.array(invalid), pa.scalar(None, arr.type), arr)
                    flag(
                        invalid,
                        lambda i, c=name: (
                            f"column {c!r} holds bytes that are not UTF-8 (set source.encoding "
                            "if the file uses another encoding)"
                        ),
                    )
        out: dict[str, pa.Array] = {}
        if self.label:
            label = cols[self.label]
            if pa.types.is_dictionary(label.type):
                label = label.dictionary_decode()
            out["__label"] = label.cast(pa.string()) if self.reader.text_values else label
        for col in self.features:
            out[col] = self._typed_column(col, cols[col], flag)
        ids = cols[src.entity_id].cast(pa.string()) if src.entity_id else None
        if src.timestamp:
            raw_ts = cols[src.timestamp].to_pandas()
            ts = pd.to_datetime(raw_ts, utc=True, errors="coerce", format="mixed")
            flag(
                ts.isna().to_numpy(),
                lambda i, t=raw_ts: f"timestamp {t.iloc[i]!r} cannot be parsed",
            )
            out["__ts"] = utc_timestamps(ts)
        return _Block(n, out, ids, rejects, parsed.ragged)

    def _typed_column(self, col: str, arr: pa.Array, flag: Callable) -> pa.Array:
        """One feature column as its kind's type (float64, boolean or text); values that do
        not fit the kind flagged with their reason (their rows are set aside)."""
        kind = self.kinds[col]
        orig = arr
        text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
        if kind == "num":
            if text:
                ok = _is_number(arr)
                flag(
                    _mask(pc.and_(arr.is_valid(), pc.invert(ok))),
                    lambda i, a=arr: f"column {col!r} has non-numeric value {a[i].as_py()!r}",
                )
                arr = pc.if_else(ok, arr, pa.scalar(None, arr.type))
            arr = arr.cast(pa.float64())
            flag(
                _mask(pc.is_inf(arr)),
                lambda i, a=orig: f"column {col!r} has a non-finite value {a[i].as_py()!r}",
            )
            if pc.any(pc.is_nan(arr)).as_py():  # NaN is a missing value: null, like the rest
                arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.float64()), arr)
            return arr
        if kind == "bool":
            if not text:
                return arr.cast(pa.bool_())
            flag(
                _mask(pc.and_(arr.is_valid(), pc.invert(_is_bool_word(arr)))),
                lambda i, a=arr: f"column {col!r} has non-boolean value {a[i].as_py()!r}",
            )
            return pc.if_else(
                arr.is_valid(),
                pc.is_in(pc.utf8_lower(arr), value_set=TRUE_SET),
                pa.scalar(None, pa.bool_()),
            )
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        return arr.cast(pa.string())

    def chunks(self) -> Iterator[Chunk]:
        """Typed batches of usable rows in source order, each with the rows it set aside."""
        if not self.kinds:
            self.decide_kinds()
        start = self.first_row
        file = FileStart(self.src.path, 0, "")  # where rows are now, for the quarantine
        in_file = 0  # rows so far in that file (several files: rows are named by it)
        ragged: dict[FileStart, list[tuple[int, str]]] = {}  # place in self.ragged, text
        items = _prefetched(self._items(), 2 * self.workers)
        for block in _in_order(self._typed, items, self.workers):
            if isinstance(block.skipped, FileStart):
                file, in_file = block.skipped, 0
                continue
            if block.skipped is not None:
                self.ragged.append((block.skipped.location, block.skipped.reason))
                continue
            for why, text in block.ragged:
                # the parser knows no line numbers in a block: found after the read
                ragged.setdefault(file, []).append((len(self.ragged), text))
                self.ragged.append(("ragged line", f"{why}: {text[:80]!r}"))
            n = block.n
            positions = np.arange(start, start + n)
            named = positions if not file.where else np.arange(in_file, in_file + n)
            start += n
            in_file += n
            self.rows_in += n
            rejects = block.rejects
            if block.ids is not None:  # row numbers are unique by construction; ids may not be
                id_array = block.ids
                id_missing = id_array.is_null().to_numpy(zero_copy_only=False)
                rejects.add(id_missing, lambda i: "missing entity id")
                # (a key repeated anywhere in the ingest is found when the parts are merged)
            else:
                id_array = pc.cast(pa.array(positions), pa.string())
            table = pa.table({"__id": id_array, **block.columns})
            if rejects.bad.any():
                table = table.filter(pa.array(~rejects.bad))
            place = f"{file.where} row" if file.where else "row"
            quarantine = [(f"{place} {named[i]}", r) for i, r in sorted(rejects.reasons.items())]
            yield Chunk(table, positions[~rejects.bad], quarantine)
        self._locate(ragged)

    def _locate(self, ragged: dict[FileStart, list[tuple[int, str]]]) -> None:
        """Name the ragged rows by their line numbers, found in one more pass over each
        file that had some."""
        for file, found in ragged.items():
            numbers = self.reader.locate(self.src, file.path, file.start, [t for _, t in found])
            for (at, _), number in zip(found, numbers, strict=True):
                if number is not None:
                    line = f"line {number}"
                    where = file.path.rsplit("/", 1)[-1] if file.where else ""
                    self.ragged[at] = (f"{where} {line}" if where else line, self.ragged[at][1])


def utc_timestamps(values: pd.Series) -> pa.Array:
    """Arrow ``timestamp[us, UTC]`` array of a tz-aware pandas Series."""
    naive = values.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("us").to_numpy()
    return pa.array(naive, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


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


def _identifier_like(arr: pa.Array, kind: str, name: str) -> str | None:
    """Why a column's first-batch values look like an identifier (see :data:`ID_SHARE`),
    or None."""
    valid = arr.drop_null()
    n = len(valid)
    if n < ID_MIN_ROWS or kind == "bool":
        return None
    distinct = pc.count_distinct(valid).as_py()
    if distinct < ID_SHARE * n:
        return None
    if kind == "num":
        if not ID_NAME.search(name):
            return None
        text = pa.types.is_string(valid.type) or pa.types.is_large_string(valid.type)
        if text and not pc.all(pc.ascii_is_decimal(valid)).as_py():
            return None
        if not text and not pa.types.is_integer(valid.type):
            return None  # measurements, not keys
        low, high = (int(v) for v in pc.min_max(valid.cast(pa.int64())).values())
        if high - low + 1 > 2 * n:
            return None
    return f"{distinct:,} of {n:,} sampled values distinct"


def _is_bool_word(arr: pa.Array) -> pa.Array:
    return pc.is_in(pc.utf8_lower(arr), value_set=BOOL_SET)


def _mask(arr: pa.Array) -> np.ndarray:
    """A NumPy bool mask of an Arrow boolean array, nulls as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)


def _share(mask: pa.Array, arr: pa.Array) -> float:
    valid = len(arr) - arr.null_count
    return float(pc.sum(pc.fill_null(mask, False)).as_py() or 0) / valid if valid else 0.0
