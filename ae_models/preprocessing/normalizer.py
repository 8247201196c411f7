"""The fitted normalizer: raw columns in, model-ready float32 features in [0, 1] out.

Fitted on the training split only and saved as a JSON spec, so scoring applies exactly the
same transform to new raw rows. Each output column records its source column. It lives next
to the model because a served model needs it: the logged MLflow model carries ``ae_models``
and nothing of the pipeline. NumPy and pandas only (pyarrow when handed Arrow data, torch for
the pixel fast path of :func:`model_input`).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ae_models.preprocessing.column_stats import FitStats, signed_log1p

log = logging.getLogger(__name__)
SPEC_VERSION = 1
OTHER, MISSING = "__other__", "__missing__"


SCALERS = ("minmax", "standard", "robust")
NORMALIZER_FILE = "normalizer.json"  # the spec's name in a model folder and beside the data
PIXEL_SCALE = 255.0  # 8-bit image pixels: divided by this (a fixed scale, nothing to fit)
# Arrow type ids of integer and floating types (pyarrow not imported: see the module doc)
_ARROW_NUMERIC = frozenset(range(2, 13))


class ExtraColumnsWarning(UserWarning):
    """Input columns the normalizer was not fitted on; they are ignored."""


OUTPUT_LIMIT = 1e6  # numeric table outputs are clipped to +-this: finite in float32
# what a spec's transform gives, beside the spec itself: 2 since min-max outputs of a table
# are no longer clipped to [0, 1] (normalized files of revision 1 are made again)
TRANSFORM_REVISION = 2


def _span(low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray | float:
    """``high - low`` without overflow: halves first (exact in binary floating point)."""
    return high / 2 - low / 2


def _usable_scale(scale: float, low: float, high: float, std: float) -> float:
    """A divisor that keeps scaled values finite: the given scale unless it is tiny next to
    the data's range ``low``..``high`` (an IQR of 1e-228 among 0s and a -1 overflowed
    float32), then the standard deviation ``std``, then the range; 1 for a constant column.
    Outputs stay within about +-1e6 of the centre."""
    span = 2 * float(_span(low, high))  # inf when it overflows
    if span <= 0:
        return 1.0
    span = min(span, np.finfo(np.float64).max)
    floor = span * 1e-6
    for candidate in (scale, std, span):
        if np.isfinite(candidate) and candidate >= floor:
            return candidate
    return span


class SchemaError(ValueError):
    """Raw data does not match what the normalizer was fitted on."""


UNSEEN, ABSENT = -1, -2  # level codes of a category not seen in fitting, of a missing value


def _pandas_values(c: ColumnSpec, s: pd.Series) -> np.ndarray:
    """A column's values as :meth:`Normalizer._fill` takes them: float64 (NaN for missing)
    for numbers, bool for booleans, level codes for categories."""
    if c.kind in ("scaled", "numeric"):
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            coerced = pd.to_numeric(s, errors="coerce")
            bad = coerced.isna() & s.notna()
            if bad.any():
                first = int(np.flatnonzero(bad.to_numpy())[0])
                raise SchemaError(
                    f"column {c.source!r} has {int(bad.sum())} non-numeric values "
                    f"(first at row {first}: {s.iloc[first]!r})"
                )
            s = coerced
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    if c.kind == "boolean":
        return s.fillna(False).astype(bool).to_numpy()
    codes = pd.Index(c.levels).get_indexer(s.astype(str))
    codes[s.isna().to_numpy()] = ABSENT
    return codes


def _arrow_values(c: ColumnSpec, col: Any) -> np.ndarray:
    """:func:`_pandas_values` of an Arrow column: numbers, booleans and text in Arrow (text
    looked up in a hash set instead of pandas' object index: 6x faster on the Adult table);
    other types through pandas, so both give the same values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if c.kind in ("scaled", "numeric") and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if c.kind == "boolean" and pa.types.is_boolean(t):
        return pc.fill_null(col, False).to_numpy(zero_copy_only=False)
    if c.kind == "categorical" and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        found = pc.index_in(col, value_set=pa.array(c.levels, t))
        codes = pc.fill_null(found, UNSEEN).to_numpy(zero_copy_only=False).astype(np.int64)
        codes[col.is_null().to_numpy(zero_copy_only=False)] = ABSENT
        return codes
    return _pandas_values(c, col.to_pandas())


@dataclass
class ColumnSpec:
    """How one source column becomes one or more output columns."""

    source: str
    kind: Literal["scaled", "numeric", "categorical", "boolean"]
    outputs: list[str]
    low: float = 0.0
    high: float = 1.0
    fill: float = 0.0
    missing_indicator: str | None = None
    levels: list[str] = field(default_factory=list)
    scaler: Literal["minmax", "standard", "robust"] = "minmax"
    center: float = 0.0
    scale: float = 1.0
    log1p: bool = False


@dataclass
class Normalizer:
    """An ordered list of column transforms; :meth:`transform` gives the model input matrix."""

    columns: list[ColumnSpec]
    version: int = SPEC_VERSION

    @property
    def source_columns(self) -> list[str]:
        """Raw columns the normalizer reads."""
        return [c.source for c in self.columns]

    @property
    def output_columns(self) -> list[str]:
        """Normalized column names, in model-input order."""
        return [name for c in self.columns for name in c.outputs]

    @property
    def unit_range(self) -> bool:
        """Whether every output lies in [0, 1] (then sigmoid + BCE fits; else linear + MSE)."""
        return all(c.kind != "numeric" or c.scaler == "minmax" for c in self.columns)

    @property
    def output_sources(self) -> dict[str, str]:
        """Map from each normalized column back to its source column."""
        return {name: c.source for c in self.columns for name in c.outputs}

    @property
    def fixed_scale(self) -> bool:
        """Whether every column is a fixed scaling (image pixels), none fitted to a table."""
        return bool(self.columns) and all(c.kind == "scaled" for c in self.columns)

    def source_groups(self) -> tuple[list[str], np.ndarray]:
        """The source columns in order, and for each normalized column (in output order) the
        index of its source column: one-hot levels share their column's index."""
        names = list(dict.fromkeys(c.source for c in self.columns))
        index = {name: i for i, name in enumerate(names)}
        return names, np.array([index[c.source] for c in self.columns for _ in c.outputs])

    # -- fitting ---------------------------------------------------------------------------

    @classmethod
    def fit_scaled(cls, columns: list[str], scale: float) -> Normalizer:
        """Fixed scaling by ``scale`` (image pixels: 255, or 16 for scikit-learn's digits)."""
        return cls([ColumnSpec(c, "scaled", [c], 0.0, float(scale)) for c in columns])

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        max_levels: int = 20,
        scaling: str = "minmax",
        per_column: dict[str, str] | None = None,
        log1p: list[str] | tuple[str, ...] = (),
    ) -> Normalizer:
        """Fit on training rows held in one frame: :meth:`from_stats` of their summary
        (exact for the medians of up to 32,768 distinct values a column)."""
        stats = FitStats(FitStats.kinds_of_frame(frame), tuple(log1p))
        stats.add_frame(frame)
        return cls.from_stats(stats, max_levels, scaling, per_column)

    @classmethod
    def from_stats(
        cls,
        stats: FitStats,
        max_levels: int = 20,
        scaling: str = "minmax",
        per_column: dict[str, str] | None = None,
    ) -> Normalizer:
        """Fit from a summary of the training rows (:class:`FitStats`, gathered batch by
        batch, so the rows need not be held).

        Numeric columns: missing values filled with the median (plus a missing-indicator
        column when any are missing), optional signed log1p, then min-max (the training rows
        span [0, 1]; other rows may lie beyond, so the score sees how far), standard
        (mean/std) or robust (median/IQR) scaling, globally or per column. Text columns:
        one-hot of the ``max_levels`` most frequent values plus ``__other__`` and
        ``__missing__``. Booleans: 0/1. Medians and quartiles are exact
        up to 32,768 distinct values a column, within a documented rank error beyond
        (:class:`~ae_models.preprocessing.column_stats.QuantileSketch`); the rest is exact.
        """
        per_column = per_column or {}
        for col, how in {"": scaling, **per_column}.items():
            if how not in SCALERS:
                where = f" for column {col!r}" if col else ""
                raise SchemaError(f"unknown scaling {how!r}{where}; available: {list(SCALERS)}")
        specs = []
        for name, kind in stats.kinds.items():
            if kind == "boolean":
                specs.append(ColumnSpec(name, "boolean", [name]))
            elif kind == "numeric":
                num = stats.numbers[name]
                if num.finite == 0:
                    raise SchemaError(f"numeric column {name!r} has no finite values to fit on")
                indicator = f"{name}__missing" if num.finite < num.rows else None
                use_log = num.log1p
                f = signed_log1p if use_log else None
                low, high = (float(f(np.array([v]))[0]) if f else v for v in (num.low, num.high))
                how = per_column.get(name, scaling)
                center, scale = 0.0, 1.0
                mean, std = num.moments.mean_std()
                if how == "standard":
                    center, scale = mean, std
                elif how == "robust":
                    q1, med, q3 = num.sketch.quantiles([0.25, 0.5, 0.75], f)
                    center, scale = float(med), 2 * float(_span(q1, q3))
                if how != "minmax":
                    scale = _usable_scale(scale, low, high, std)
                specs.append(
                    ColumnSpec(
                        name,
                        "numeric",
                        [name] + ([indicator] if indicator else []),
                        low=low,
                        high=high,
                        fill=num.sketch.quantiles([0.5])[0],
                        missing_indicator=indicator,
                        scaler=how,  # type: ignore[arg-type]
                        center=center,
                        scale=scale if scale > 0 else 1.0,
                        log1p=use_log,
                    )
                )
            else:
                levels = stats.texts[name].top(max_levels)
                outputs = [f"{name}={v}" for v in levels] + [f"{name}={OTHER}", f"{name}={MISSING}"]
                specs.append(ColumnSpec(name, "categorical", outputs, levels=levels))
        return cls(specs)

    # -- applying --------------------------------------------------------------------------

    def check_columns(self, frame: pd.DataFrame, known: tuple[str, ...] = ()) -> None:
        """Raise SchemaError naming the expected columns that ``frame`` lacks; warn
        (ExtraColumnsWarning) naming columns it has beyond those and ``known``."""
        self._check_names(list(frame.columns), known, stacklevel=4)

    def _check_names(self, names: list[Any], known: tuple[str, ...], stacklevel: int) -> None:
        present = set(names)
        missing = [c for c in self.source_columns if c not in present]
        if missing:
            raise SchemaError(
                f"input is missing {len(missing)} expected column(s): {missing[:10]}"
                + (" ..." if len(missing) > 10 else "")
            )
        expected = set(self.source_columns) | set(known)
        extra = [str(c) for c in names if c not in expected]
        if extra:
            warnings.warn(
                f"ignoring {len(extra)} column(s) the normalizer was not fitted on: "
                f"{extra[:10]}" + (" ..." if len(extra) > 10 else ""),
                ExtraColumnsWarning,
                stacklevel=stacklevel,
            )

    def transform(self, frame: pd.DataFrame, known: tuple[str, ...] = ()) -> np.ndarray:
        """Normalized float32 matrix (rows x output columns): in [0, 1] for booleans, one-hot
        and pixels, and for min-max within the training range (beyond it below 0 or above
        1); centred and scaled for standard and robust scaling. Columns in
        ``known`` (ids, timestamps) are expected extras and not warned about."""
        self.check_columns(frame, known)
        if self.fixed_scale:
            return self._transform_scaled(frame)
        return self._fill(len(frame), lambda c: _pandas_values(c, frame[c.source]))

    def transform_arrow(self, batch: Any, known: tuple[str, ...] = ()) -> np.ndarray:
        """:meth:`transform` for an Arrow record batch or table, without pandas for the
        column types raw Parquet holds (numbers, booleans, text; others go through pandas)."""
        self._check_names(batch.schema.names, known, stacklevel=3)
        if self.fixed_scale:
            types = (batch.schema.field(c).type.id for c in self.source_columns)
            if all(t in _ARROW_NUMERIC for t in types):
                # column-major: each source column fills a contiguous stretch
                values = np.empty((len(self.columns), batch.num_rows), np.float32).T
                for j, c in enumerate(self.source_columns):
                    col = batch.column(c)
                    values[:, j] = col.to_numpy(zero_copy_only=False)
                    if col.null_count:
                        values[~col.is_valid().to_numpy(zero_copy_only=False), j] = np.nan
                return self.scale_matrix(values)
        return self._fill(batch.num_rows, lambda c: _arrow_values(c, batch.column(c.source)))

    def _fill(self, n: int, values_of: Any) -> np.ndarray:
        """The output matrix from each column's values as ``values_of(spec)`` gives them
        (see :func:`_pandas_values`): row-major float32 (what Parquet's tensor column and
        torch take without a copy), filled column by column; one-hot levels are set by one
        scatter a column, not a pass a level."""
        out = np.zeros((n, len(self.output_columns)), np.float32)
        rows = np.arange(n)
        j = 0
        for c in self.columns:
            v = values_of(c)
            if c.kind in ("scaled", "numeric"):
                missing = ~np.isfinite(v)
                if c.kind == "numeric":
                    v = np.where(missing, c.fill, v)
                    if c.log1p:
                        v = signed_log1p(v)
                if c.kind == "numeric" and c.scaler != "minmax":
                    # halved before differencing: no overflow next to values near 1e308
                    z = _span(c.center, v) / (c.scale / 2)
                    out[:, j] = np.clip(z, -OUTPUT_LIMIT, OUTPUT_LIMIT)
                else:
                    span = _span(c.low, c.high)
                    v = _span(c.low, v) / span if span > 0 else np.zeros_like(v)
                    if c.kind == "scaled":  # pixels: a fixed range, clipped to it
                        out[:, j] = np.clip(np.where(missing, 0.0, v), 0.0, 1.0)
                    else:  # the training range is [0, 1]; beyond it stays visible
                        out[:, j] = np.clip(v, -OUTPUT_LIMIT, OUTPUT_LIMIT)
                j += 1
                if c.missing_indicator:
                    out[:, j] = missing
                    j += 1
            elif c.kind == "boolean":
                out[:, j] = v
                j += 1
            else:  # level codes, with UNSEEN and ABSENT
                other = len(c.levels)
                pos = np.where(v == UNSEEN, other, np.where(v == ABSENT, other + 1, v))
                out[rows, j + pos] = 1.0
                j += len(c.outputs)
        return out

    def _transform_scaled(self, frame: pd.DataFrame) -> np.ndarray:
        """All-pixel fast path: one vectorized scaling instead of a loop over columns."""
        raw = frame[self.source_columns]
        try:
            values = raw.to_numpy(dtype=np.float32, na_value=np.nan, copy=True)
        except (TypeError, ValueError):
            bad = next(c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c]))
            raise SchemaError(f"column {bad!r} has non-numeric values") from None
        return self.scale_matrix(values)

    def scaled_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column offset and inverse span (0 for a constant column) of a fixed-scale
        normalizer: the one definition of pixel scaling, which the NumPy path
        (:meth:`scale_matrix`) and the torch path (:func:`model_input`) both apply."""
        low = np.array([c.low for c in self.columns], dtype=np.float32)
        span = np.array([c.high - c.low for c in self.columns], dtype=np.float32)
        inv = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
        return low, inv

    def scale_matrix(self, values: np.ndarray) -> np.ndarray:
        """Min-max scale a float32 pixel matrix in place: missing/non-finite to 0, clip [0, 1]."""
        low, inv = self.scaled_bounds()
        bad = ~np.isfinite(values)
        values -= low
        values *= inv
        values[bad] = 0.0
        return np.clip(values, 0.0, 1.0, out=values)

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready spec."""
        return {"version": self.version, "columns": [asdict(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Normalizer:
        """Rebuild from :meth:`to_dict` output; refuses unknown spec versions."""
        if spec.get("version") != SPEC_VERSION:
            raise SchemaError(f"normalizer spec version {spec.get('version')!r} is not supported")
        return cls([ColumnSpec(**c) for c in spec["columns"]])

    def save(self, path: str | Path) -> Path:
        """Write the JSON spec to ``path``."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        """Read a JSON spec written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


class ScaledBytes:
    """Rows of bytes (aepipe's pixel tensor column) that become the model's float32 input a
    batch at a time, as the model reads them (:class:`~ae_models.training.streaming.Rows`): a
    1,024-row batch is converted, scaled, run and scored while it is in cache, instead of
    the whole Parquet batch being written out as float32 first and read back (measured
    15-20 % less time for conversion, network and BCE on 65,536 MNIST rows)."""

    def __init__(self, values: Any, low: Any, inv: Any) -> None:
        """``values``: a (rows, width) integer tensor; each input is
        ``clip((value - low) * inv, 0, 1)`` (``low`` None: 0, and no clip is needed)."""
        self.values, self.low, self.inv = values, low, inv
        self.rows, self.width = int(values.shape[0]), int(values.shape[1])

    def scaled(self, values: Any) -> Any:
        """Some of the rows (a tensor of them) as float32 model input."""
        import torch

        out = values.to(torch.float32)
        if self.low is None:
            return out.mul_(self.inv)
        return out.sub_(self.low).mul_(self.inv).clamp_(0.0, 1.0)

    def ordered_batches(self, batch_size: int) -> Any:
        """The rows in order, ``batch_size`` at a time, as float32."""
        for start in range(0, self.rows, batch_size):
            yield self.scaled(self.values[start : start + batch_size])

    def epoch_batches(self, epoch: int, batch_size: int, generator: Any) -> Any:
        """The rows in a random order (``generator``'s), ``batch_size`` at a time."""
        import torch

        order = torch.randperm(self.rows, generator=generator)
        for start in range(0, self.rows, batch_size):
            yield self.scaled(self.values[order[start : start + batch_size]])

    def matrix(self) -> np.ndarray:
        """All the rows as one float32 matrix."""
        return self.scaled(self.values).numpy()


def model_input(
    batch: Any, normalizer: Normalizer, known: tuple[str, ...] = (), lazy: bool = False
) -> Any:
    """The normalized model input (NumPy or torch, float32) of a raw Arrow batch. Pixel data
    (every column a fixed scaling of integers without nulls) takes a fast path: the columns
    are stacked as they are and torch transposes and scales them in one pass, several times
    faster than going through pandas; aepipe's own files hold pixels in one tensor column
    (:mod:`ae_models.preprocessing.tensor_column`), scaled the same way. ``known``: columns that
    are not
    features (ids, times). ``lazy``: bytes come back as :class:`ScaledBytes`, converted a
    model batch at a time."""
    import pyarrow as pa
    import torch

    from ae_models.preprocessing.tensor_column import FEATURES, find_tensor, tensor_values

    specs = normalizer.columns
    tensor = find_tensor(batch.schema)
    if tensor is not None:  # aepipe's ingested pixels: one column of bytes a row
        if not normalizer.fixed_scale or tensor.width != len(specs):
            raise SchemaError(
                f"the data holds {tensor.width} features in its {FEATURES!r} column; the "
                f"normalizer reads {len(specs)} named column(s) "
                f"{'of pixels' if normalizer.fixed_scale else 'of a table'}"
            )
        stored = tensor_values(batch.column(FEATURES), tensor)  # a view of Arrow's buffer
        with warnings.catch_warnings():  # read-only: only read, by the conversion below
            warnings.simplefilter("ignore", UserWarning)
            values = torch.from_numpy(stored)
        low, inv = normalizer.scaled_bounds()
        fits = stored.dtype == np.uint8 and not low.any() and (inv * 255 <= 1).all()
        # bytes over a scale >= 255 are in [0, 1] already: no offset, no clip
        rows = ScaledBytes(values, None if fits else torch.from_numpy(low), torch.from_numpy(inv))
        return rows if lazy else rows.scaled(values)  # torch converts on both cores
    if specs and all(c.kind == "scaled" for c in specs):
        cols = [batch.column(c.source) for c in specs]
        if all(pa.types.is_integer(c.type) and c.null_count == 0 for c in cols):
            stacked = torch.from_numpy(np.stack([c.to_numpy() for c in cols]))
            low, inv = (torch.from_numpy(a) for a in normalizer.scaled_bounds())
            return stacked.T.contiguous().float().sub_(low).mul_(inv).clamp_(0.0, 1.0)
    return normalizer.transform_arrow(batch, known)
