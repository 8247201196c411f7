"""Normalize: fit the normalizer on the training split and write model-ready features.

One path: :func:`normalize_dataset` takes the ingest's reference and returns the normalized
file's. What it needs from the rows comes from one pass, the earliest that sees them:

- a table ingested in one pass: the ingest's own (the flow hands it :func:`while_reading`,
  whose summary of the training rows travels in ``raw.parquet``'s metadata); otherwise a
  first pass over the raw file here;
- fixed-scale sources (image pixels, IDX, the built-in digits): nothing to fit; the ingest
  partitions wrote the scaled rows as they decoded them (:class:`ScaledRows`), so the
  pixels are not read back, and this stage finds their file and reuses it.

Splits come from :mod:`tasks.io.splits` (a seeded hash of the entity id), wherever rows
are read. This stage never imports the ingest: both speak :mod:`tasks.stages`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from ae_models.preprocessing.column_stats import FitStats
from ae_models.preprocessing.normalizer import TRANSFORM_REVISION, Normalizer, SchemaError
from ae_models.preprocessing.tensor_column import FEATURES, TensorSpec, find_tensor, tensor_values
from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP, LABEL, SPLIT, SPLITS, TRAIN
from stores import Stores
from stores.space import room_for
from tasks.config import ConfigError, PipelineConfig
from tasks.io.parquet import ParquetSink, read_ahead, with_tensor
from tasks.io.parts import concat_parts
from tasks.io.sources import json_digest
from tasks.io.splits import SPLIT_NAMES, split_codes, split_counts
from tasks.stages import NORMALIZED_FILE, SPEC_FILE, IngestResult, NormalizedData

if TYPE_CHECKING:
    from tasks.io.arrays import ArrayData

NORMALIZE_BATCH = 65_536  # rows per normalize batch, at most
MIN_TRAIN_ROWS = 2  # fewer cannot be fitted meaningfully (nor batch-normalized)
NORMALIZE_BATCH_CELLS = 8 << 20  # wide rows (pixels) come in fewer: buffers reused, cached
WRITE_BATCH_BYTES = 8 << 20  # features per batch written (and row group), at most about
FIT_KEY = "aepipe.fit"  # raw.parquet metadata: the normalizer fitted in the ingest's pass
# (NormalizedData stays importable from here: earlier releases' cached results name it so)


def _normalize_batch_rows(n_features: int) -> int:
    """Rows per normalize batch: fewer for wide rows (pixels), so buffers stay cached."""
    return min(NORMALIZE_BATCH, max(1024, NORMALIZE_BATCH_CELLS // max(1, n_features)))


def _check_train_rows(counts: dict[str, int]) -> int:
    """All rows, after checking enough fell in the training split to fit a model."""
    rows = sum(counts.values())
    if counts[TRAIN] < MIN_TRAIN_ROWS:
        raise ConfigError(
            f"{counts['train'] or 'no'} row(s) fell in the training split ({rows} rows in "
            f"all); training needs at least {MIN_TRAIN_ROWS}"
        )
    return rows


def split_codes_of(ids: pa.Array | pa.ChunkedArray, cfg: PipelineConfig) -> np.ndarray:
    """Each row's split code (:data:`~tasks.io.splits.SPLIT_NAMES`) under ``cfg``'s split
    settings."""
    return split_codes(ids, cfg.test_fraction, cfg.val_fraction, cfg.train.seed)


def _scaled_block(data: ArrayData, pixels: np.ndarray | None) -> tuple[TensorSpec, np.ndarray]:
    """The tensor spec and values of a block of fixed-scale rows: bytes stored as they are,
    with their scale (exact: what the fixed scaling computes, see
    :func:`ae_models.preprocessing.tensor_column.tensor_floats`); float32 values when a byte
    cannot hold them."""
    if pixels is not None:
        return TensorSpec("uint8", pixels.shape[1], float(data.scale)), pixels
    normalizer = Normalizer.fit_scaled(data.columns, data.scale)
    values = normalizer.scale_matrix(np.array(data.features, np.float32, order="C"))
    return TensorSpec("float32", len(data.columns)), values


class ScaledRows:
    """Writes one ingest partition's fixed-scale rows normalized, with their splits, block
    by block as it decodes them (:class:`~tasks.stages.ScaledAlong`); the file is opened
    with the first block that has a scale."""

    def __init__(self, path: Path, cfg: PipelineConfig) -> None:
        self.path, self.cfg = path, cfg
        self.split_rows: dict[str, int] | None = None
        self._sink: ParquetSink | None = None

    def __enter__(self) -> ScaledRows:
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._sink.__exit__(*exc) if self._sink is not None else None

    def write(self, data: ArrayData, pixels: np.ndarray | None, roles: dict[str, Any]) -> None:
        """Queue a decoded block (``pixels``: its rows as bytes, None when a byte cannot hold
        them) with its role columns; blocks without a scale are not fixed-scale rows."""
        if data.scale is None:
            return
        if self._sink is None:
            self._sink = ParquetSink(self.path).__enter__()
            self.split_rows = dict.fromkeys(SPLITS, 0)
        codes = split_codes_of(roles[ENTITY_KEY], self.cfg)
        spec, values = _scaled_block(data, pixels)
        step = _normalize_batch_rows(spec.width)  # row groups: what partitions and streams take
        for start in range(0, len(values), step):
            part = slice(start, start + step)
            arrays = {name: column[part] for name, column in roles.items()}
            arrays[SPLIT] = SPLIT_NAMES.take(codes[part])
            self._sink.write(with_tensor(arrays, values[part], spec))
        for name, n in split_counts(codes).items():
            self.split_rows[name] += n


@dataclass(frozen=True)
class WhileReading:
    """Normalize's work on the rows while the ingest reads them
    (:class:`~tasks.stages.ReadAlong`): a table's training summary in a single pass, and
    fixed-scale rows written normalized. The flow hands it to the ingest."""

    cfg: PipelineConfig
    metadata_keys: tuple[str, ...] = (FIT_KEY,)

    def table(self, kinds: dict[str, str]) -> TrainingSummary | None:
        """A summary of a table's training rows (reader kinds ``num``/``bool``/``cat``)."""
        names = {"num": "numeric", "bool": "boolean", "cat": "categorical"}
        return TrainingSummary({c: names[k] for c, k in kinds.items()}, self.cfg)

    def scaled(self, path: Path) -> ScaledRows:
        """A writer of one partition's fixed-scale rows, normalized, to ``path``."""
        return ScaledRows(path, self.cfg)

    def merge_scaled(
        self, folder: Path, columns: list[str], scale: float, parts: Sequence[str]
    ) -> list[Path]:
        """The partitions' normalized rows joined (in order) into ``normalized.parquet``,
        with the fixed-scale normalizer's spec beside it; both paths."""
        spec = Normalizer.fit_scaled(columns, scale).save(folder / SPEC_FILE)
        path = folder / NORMALIZED_FILE
        if len(parts) == 1:
            os.replace(parts[0], path)
        else:
            concat_parts(list(enumerate(parts)), {}, path)
        return [path, Path(spec)]


def while_reading(cfg: PipelineConfig) -> WhileReading:
    """What the flow hands the ingest, so normalize's work on the rows is done in its pass."""
    return WhileReading(cfg)


def _fit_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """What a fitted normalizer depends on beyond the rows (the splits are in the ingest's
    fingerprint already)."""
    return {"normalize": cfg.normalize.model_dump(mode="json"), "levels": cfg.source.max_levels}


class TrainingSummary:
    """Splits counted and training rows summarized batch by batch: what fitting a table's
    normalizer needs, gathered in the ingest's own pass (one pass over the source) or, for
    ingests of several partitions, in a first pass over the raw file."""

    def __init__(self, kinds: dict[str, str], cfg: PipelineConfig) -> None:
        """``kinds``: each feature column's
        :data:`~ae_models.preprocessing.column_stats.KINDS` entry
        (none: nothing to summarize, splits only)."""
        self.cfg = cfg
        self.stats = FitStats(kinds, tuple(cfg.normalize.log1p)) if kinds else None
        self.counts = dict.fromkeys(SPLITS, 0)

    def add(
        self, ids: pa.Array | pa.ChunkedArray, features: pa.Table | pa.RecordBatch
    ) -> np.ndarray:
        """Take a batch (its ids and feature columns); its split codes."""
        codes = split_codes_of(ids, self.cfg)
        for name, n in split_counts(codes).items():
            self.counts[name] += n
        if self.stats is not None:
            train = codes == 0
            self.stats.add_arrow(features if train.all() else features.filter(pa.array(train)))
        return codes

    def normalizer(self) -> Normalizer:
        """The normalizer fitted from the summary (SchemaError when it cannot be)."""
        if self.stats is None:
            raise SchemaError("no feature columns were summarized")
        cfg = self.cfg
        return Normalizer.from_stats(
            self.stats,
            max_levels=cfg.source.max_levels,
            scaling=cfg.normalize.scaling,
            per_column=cfg.normalize.columns,
        )

    def metadata(self) -> dict[str, str]:
        """The fitted normalizer and the split counts as raw Parquet metadata (under
        :data:`FIT_KEY`), for :func:`fitted_while_ingesting`; empty when it cannot be fitted
        (normalize then fits again, and reports why)."""
        try:
            spec = self.normalizer().to_dict()
        except SchemaError:
            return {}
        fit = {"settings": _fit_settings(self.cfg), "spec": spec, "split_rows": self.counts}
        return {FIT_KEY: json.dumps(fit)}


def fitted_while_ingesting(
    source: pq.ParquetFile, cfg: PipelineConfig
) -> tuple[Normalizer, dict[str, int]] | None:
    """The normalizer and split counts the ingest fitted in its pass over the source, when
    it did and with these settings; None otherwise (then normalize summarizes the raw
    file itself)."""
    held = (source.metadata.metadata or {}).get(FIT_KEY.encode())
    if held is None:
        return None
    fit = json.loads(held)
    if fit["settings"] != _fit_settings(cfg):
        return None
    return Normalizer.from_dict(fit["spec"]), dict(fit["split_rows"])


def normalize_dataset(ingested: IngestResult, cfg: PipelineConfig) -> NormalizedData:
    """Fit the normalizer on the training split, transform all rows, write Parquet + JSON spec.

    A table ingested in one partition was summarized by the ingest's own pass
    (:class:`TrainingSummary`, kept in the raw file's metadata): one pass over the raw
    Parquet transforms and writes it batch by batch. Otherwise a first pass assigns splits
    and summarizes the training rows
    (:class:`~ae_models.preprocessing.column_stats.FitStats`: bounded
    memory, whatever the rows).
    Fixed-scale sources (pixels) were normalized by the ingest itself; their file is reused.
    """
    folder = Path(ingested.path).parent
    path, spec_path = folder / NORMALIZED_FILE, folder / SPEC_FILE
    if ingested.split_rows is not None and path.exists() and spec_path.exists():
        counts = dict(ingested.split_rows)
        _check_train_rows(counts)
        names = Normalizer.load(spec_path).output_columns
        return NormalizedData(
            str(path), str(spec_path), ingested.rows, names, counts, ingested.has_label
        )
    source = pq.ParquetFile(ingested.path)
    normalizer, counts, batch_codes = _fit_normalizer(source, ingested, cfg)
    rows = _check_train_rows(counts)
    try:
        _write_normalized(source, ingested, normalizer, counts, batch_codes, path, cfg)
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    normalizer.save(spec_path)
    names = normalizer.output_columns
    return NormalizedData(str(path), str(spec_path), rows, names, counts, ingested.has_label)


def _fit_normalizer(
    source: pq.ParquetFile, ingested: IngestResult, cfg: PipelineConfig
) -> tuple[Normalizer, dict[str, int], list[np.ndarray] | None]:
    """The normalizer, the rows per split and each batch's split codes (None: hashed again
    while writing): fitted while ingesting, or from a first pass that assigns splits and
    summarizes the training rows; pixels' fixed scale fits on nothing."""
    features = ingested.features
    fitted = None if ingested.pixel_scale else fitted_while_ingesting(source, cfg)
    if fitted is not None:
        normalizer, counts = fitted
        return normalizer, counts, None
    kinds = {} if ingested.pixel_scale else FitStats.kinds_of_arrow(source.schema_arrow, features)
    summary = TrainingSummary(kinds, cfg)
    columns = [ENTITY_KEY] + ([] if ingested.pixel_scale else features)
    batch_codes = []  # a byte a row, so the second pass need not hash again
    batch_rows = _normalize_batch_rows(len(features))
    for batch in read_ahead(source.iter_batches(batch_size=batch_rows, columns=columns)):
        batch_codes.append(summary.add(batch.column(ENTITY_KEY), batch))
    _check_train_rows(summary.counts)
    try:
        if ingested.pixel_scale:  # fixed pixel scaling fits on nothing
            normalizer = Normalizer.fit_scaled(features, ingested.pixel_scale)
        else:
            normalizer = summary.normalizer()
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    return normalizer, summary.counts, batch_codes


def _write_normalized(
    source: pq.ParquetFile,
    ingested: IngestResult,
    normalizer: Normalizer,
    counts: dict[str, int],
    batch_codes: list[np.ndarray] | None,
    path: Path,
    cfg: PipelineConfig,
) -> None:
    """Transform every raw row and write it with its split to ``path``, batch by batch."""
    features = ingested.features
    keep = [ENTITY_KEY, EVENT_TIMESTAMP] + ([LABEL] if ingested.has_label else [])
    raw_tensor = find_tensor(source.schema_arrow)
    if raw_tensor is not None and ingested.pixel_scale:  # bytes stay bytes, with their scale
        spec = TensorSpec("uint8", raw_tensor.width, float(ingested.pixel_scale))
    else:
        spec = TensorSpec("float32", len(normalizer.output_columns))
    width = spec.width * (4 if spec.dtype == "float32" else 1) + 32  # with id, time, split
    need = sum(counts.values()) * width
    room = room_for(path.parent, need, "data", f"normalizing {ingested.path}")
    with room, ParquetSink(path) as sink:  # encodes a batch while the next is transformed
        codes_of = np.concatenate(batch_codes) if batch_codes is not None else None
        # batches of about WRITE_BATCH_BYTES of features: what the sink holds (a batch
        # encoding, two waiting) stays small however wide one-hot makes the rows
        write_rows = min(
            _normalize_batch_rows(len(features)),
            max(1024, WRITE_BATCH_BYTES // spec.field().type.byte_width),
        )
        done = 0
        for batch in read_ahead(source.iter_batches(batch_size=write_rows)):
            if codes_of is None:
                codes = split_codes_of(batch.column(ENTITY_KEY), cfg)
            else:
                codes = codes_of[done : done + batch.num_rows]
            done += batch.num_rows
            if spec.dtype == "uint8":
                values = tensor_values(batch.column(FEATURES), raw_tensor)
            else:  # row-major: each row's features are one value of the column
                values = normalizer.transform_arrow(batch.select(features))
            arrays = {name: batch.column(name) for name in keep}
            arrays[SPLIT] = SPLIT_NAMES.take(codes)
            sink.write(with_tensor(arrays, values, spec))


def normalize_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of a normalization: the ingest it reads (the data set and the
    source's fingerprint, which name its folder in any home) and the normalize settings."""
    ingested, cfg = parameters["ingested"], parameters["cfg"]
    return "aepipe-normalize-" + json_digest(
        cfg.dataset,
        ingested.fingerprint,
        ingested.content_digest,
        cfg.normalize.model_dump(mode="json"),
        TRANSFORM_REVISION,
    )


# Cached by Prefect across runs: the result persists as JSON (never a pickle) in the data
# store's result storage, so a scheduled run on an unchanged source does not normalize again.
normalize_task = task(
    name="normalize",
    cache_key_fn=normalize_cache_key,
    persist_result=True,
    result_serializer="json",
)(normalize_dataset)


def normalize(ingested: IngestResult, cfg: PipelineConfig, stores: Stores) -> NormalizedData:
    """The cached normalize task, told to run again when the files its cached result points
    to are gone (say, someone cleared the data folder). On an object-store ``AEPIPE_DATA``
    the files are fetched when this home lacks them, and published when made here."""
    from stores import data as data_store
    from tasks.results import result_storage

    folder = Path(ingested.path).parent
    path, spec_path = folder / NORMALIZED_FILE, folder / SPEC_FILE
    # (the ingest stage made ingested.path present here: normalize reads it when not done)
    done = data_store.present(stores, path, spec_path)
    results = result_storage(stores)  # on AEPIPE_DATA: shared by every machine
    data = normalize_task.with_options(refresh_cache=not done, result_storage=results)(
        ingested, cfg
    )
    # a result cached by another home names its files there
    data = dataclasses.replace(data, path=str(path), spec_path=str(spec_path))
    if not done:
        data_store.share(stores, data)
    return data
