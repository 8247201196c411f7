"""Streaming reads of tables (CSV, Parquet file / folder / glob) with per-row checks.

Rows arrive in batches of typed pandas frames; rows that cannot be used (ragged CSV lines,
text in a numeric column, infinite values, unparseable timestamps, duplicate entity ids) are
set aside with their location and reason instead of failing the run. Column types are
decided from the first batch: a column is numeric (or boolean) when at least 80 % of its
values there parse as such; the rest of its rows are then quarantined, not the column lost.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

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


def _csv_batches(
    path: str,
    delimiter: str,
    quote_char: str | None,
    header: bool,
    names: list[str],
    ragged: list[tuple[str, str]],
) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    def on_invalid(row) -> str:
        # pyarrow knows the line number only in some read modes; the text identifies the row
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
        path,
        read_options=pacsv.ReadOptions(
            block_size=1 << 22, column_names=names, skip_rows=1 if header else 0
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

    def __init__(self, src, columns: list[str], features: list[str], label: str | None) -> None:
        self.src, self.columns, self.features, self.label = src, columns, features, label
        self.kinds: dict[str, str] = {}
        self.seen_ids: set[str] = set()
        self.rows_in = 0
        self.ragged: list[tuple[str, str]] = []

    def _raw_batches(self) -> Iterator[pd.DataFrame]:
        src = self.src
        if src.resolved_format == "csv":
            batches = _csv_batches(
                src.path, src.delimiter, src.quote_char, src.header, self.columns, self.ragged
            )
        else:
            import pyarrow.dataset as ds

            batches = ds.dataset(parquet_files(src.path), format="parquet").to_batches(
                batch_size=BATCH_ROWS
            )
        for batch in batches:
            frame = batch.to_pandas()
            if src.resolved_format == "csv":
                frame = self._clean_text(frame)
            yield frame

    def _clean_text(self, frame: pd.DataFrame) -> pd.DataFrame:
        na = set(self.src.na_values)
        out = {}
        for col in frame.columns:
            s = frame[col].astype(object)
            if self.src.skip_initial_space:
                s = s.str.strip()
            out[col] = s.where(~s.isin(na), None)
        return pd.DataFrame(out)

    def _decide_kinds(self, frame: pd.DataFrame) -> None:
        for col in self.features:
            s = frame[col]
            if pd.api.types.is_bool_dtype(s):
                self.kinds[col] = "bool"
            elif pd.api.types.is_numeric_dtype(s):
                self.kinds[col] = "num"
            else:
                text = s.dropna().astype(str)
                if text.empty:
                    self.kinds[col] = "num"
                elif text.str.lower().isin(TRUE_WORDS | FALSE_WORDS).mean() >= TYPE_SHARE:
                    self.kinds[col] = "bool"
                elif pd.to_numeric(text, errors="coerce").notna().mean() >= TYPE_SHARE:
                    self.kinds[col] = "num"
                else:
                    self.kinds[col] = "cat"

    def chunks(self) -> Iterator[Chunk]:
        """Typed batches of usable rows, each with the rows it set aside."""
        src = self.src
        start = 0
        for frame in self._raw_batches():
            if not self.kinds:
                self._decide_kinds(frame)
            n = len(frame)
            positions = np.arange(start, start + n)
            start += n
            self.rows_in += n
            rejects = _Rejects(n)
            flag = rejects.add
            bad = rejects.bad

            typed: dict[str, pd.Series] = {}
            for col in self.features:
                s = frame[col]
                kind = self.kinds[col]
                if kind == "num":
                    num = pd.to_numeric(s, errors="coerce").astype("float64")
                    text_bad = (num.isna() & s.notna()).to_numpy()
                    flag(
                        text_bad,
                        lambda i, c=col, s=s: f"column {c!r} has non-numeric value {s.iloc[i]!r}",
                    )
                    inf = np.isinf(num.to_numpy(dtype=np.float64, na_value=np.nan))
                    flag(
                        inf,
                        lambda i, c=col, s=s: f"column {c!r} has a non-finite value {s.iloc[i]!r}",
                    )
                    typed[col] = num
                elif kind == "bool":
                    if pd.api.types.is_bool_dtype(s):
                        typed[col] = s.astype("boolean")
                    else:
                        low = s.astype("string").str.lower()
                        ok = low.isna() | low.isin(TRUE_WORDS | FALSE_WORDS)
                        flag(
                            ~ok.to_numpy(dtype=bool),
                            lambda i, c=col, s=s: (
                                f"column {c!r} has non-boolean value {s.iloc[i]!r}"
                            ),
                        )
                        typed[col] = low.isin(TRUE_WORDS).astype("boolean").where(low.notna())
                else:
                    typed[col] = s.astype("string")
            ids = (
                frame[src.entity_id].astype("string")
                if src.entity_id
                else pd.Series(positions.astype(str), dtype="string")
            )
            id_missing = ids.isna().to_numpy()
            flag(id_missing, lambda i: "missing entity id")
            live = ~id_missing & ~bad
            dup = live & (ids.duplicated().to_numpy() | ids.isin(self.seen_ids).to_numpy())
            flag(dup, lambda i, ids=ids: f"duplicate entity id {ids.iloc[i]!r}")
            self.seen_ids.update(ids[live & ~dup].tolist())
            if src.timestamp:
                ts = pd.to_datetime(frame[src.timestamp], utc=True, errors="coerce", format="mixed")
                flag(
                    ts.isna().to_numpy(),
                    lambda i, t=frame[src.timestamp]: f"timestamp {t.iloc[i]!r} cannot be parsed",
                )
            else:
                ts = None
            out = pd.DataFrame(typed)
            out.insert(0, "__id", ids)
            if ts is not None:
                out.insert(1, "__ts", ts)
            if self.label:
                out.insert(
                    len(out.columns) - len(self.features),
                    "__label",
                    frame[self.label].astype("string")
                    if src.resolved_format == "csv"
                    else frame[self.label],
                )
            keep = ~rejects.bad
            quarantine = [(f"row {positions[i]}", r) for i, r in sorted(rejects.reasons.items())]
            yield Chunk(out[keep].reset_index(drop=True), positions[keep], quarantine)
