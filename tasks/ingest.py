"""Ingest: read a source (built-in digits, CSV, Parquet, image folder, IDX, NPZ) into raw
Parquet with its role columns, in partitions that Prefect tasks map over.

A plan task fixes what every partition must agree on, one task per partition reads its
slice, and a merge task joins the parts into ``raw.parquet`` beside ``quarantine.parquet``:
rows in = rows written + rows quarantined. Readers, source inspection and the Parquet writer
are library code in :mod:`tasks.io`. What a later stage does with the rows while they are
read (normalize's summary, its scaled pixels) comes in as a :class:`~tasks.stages.ReadAlong`
that the flow hands over (``flows/ingest.py`` wires the stages; this one imports no other).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ae_models.preprocessing.tensor_column import TensorSpec
from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP, LABEL, SPLITS
from stores import Stores
from stores import data as data_store
from stores.data import rehome
from tasks.config import ConfigError, PipelineConfig, SourceConfig
from tasks.io import arrays
from tasks.io.keys import KeyFile
from tasks.io.parquet import Background, ParquetSink, with_features, with_tensor, write_table
from tasks.io.parts import concat_parts, cross_part_duplicates
from tasks.io.readers import reader_of
from tasks.io.readers.base import IncrementalUnavailable, IngestPart
from tasks.io.sources import (
    ArrayDigest,
    SourceInfo,
    inspect_source,
    json_digest,
    source_fingerprint,
)
from tasks.logs import run_logger
from tasks.runners import io_task
from tasks.stages import QUARANTINE_FILE, RAW_FILE, IngestedPart, IngestResult, ReadAlong

log = logging.getLogger(__name__)


def _quarantine_table(rows: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {"location": [r[0] for r in rows], "reason": [r[1] for r in rows]},
        schema=pa.schema([("location", pa.string()), ("reason", pa.string())]),
    )


@dataclass(frozen=True)
class IngestPlan:
    """How a source is ingested: its partitions and what they must agree on (column kinds of
    a table, the layout of images), decided once, before the partitions run."""

    fingerprint: str
    folder: str
    work: str  # this run's folder for the partitions' files, removed by the merge
    info: SourceInfo
    parts: list[IngestPart]
    kinds: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # source column -> why
    layout: arrays.ImageLayout | None = None
    labelled: bool = False
    stores: Stores | None = None  # where the partitions publish their files (AEPIPE_DATA)
    since: str | None = None  # an incremental read: the marker it reads past
    marker: str | None = None  # where the source stood when planned (None: cannot say)

    def write_bound(self, cfg: PipelineConfig) -> int:
        """An upper bound of the bytes ingesting this plan writes to the data folder."""
        return self.info.reader.write_bound(cfg.source, self)

    @property
    def raw_path(self) -> Path:
        """Where the merged raw Parquet goes."""
        return Path(self.folder) / RAW_FILE


@dataclass(frozen=True)
class _PartRead:
    """What reading one partition gave, before its quarantine is written."""

    rows_out: int
    rows_in: int
    quarantine: list[tuple[str, str]]
    digest: str
    pixel_scale: float | None = None
    normalized: str | None = None
    split_rows: dict[str, int] | None = None
    keys: str | None = None


@contextlib.contextmanager
def cleaned_on_failure(plan: IngestPlan, stores: Stores) -> Iterator[None]:
    """A partition or the merge failed: this run's partition files go, here and on an
    object-store ``AEPIPE_DATA``; the raw file of an earlier run stays."""
    try:
        yield
    except BaseException:
        shutil.rmtree(Path(plan.work), ignore_errors=True)
        data_store.drop(stores, plan.work)
        raise


def plan_ingest(cfg: PipelineConfig, stores: Stores, since: str | None = None) -> IngestPlan:
    """Split the source into the partitions its reader plans (Parquet row-group ranges of
    about ``partition_rows`` rows, chunks of an image folder's files; a CSV, IDX or NPZ file
    is one). Column kinds (tables) and the image layout are fixed here, so every partition
    agrees. With ``since`` (a marker an earlier ingest recorded), only what the source
    gained after it: :class:`IncrementalUnavailable` when its reader cannot say."""
    import uuid

    src = cfg.source
    reader = reader_of(src)
    listing = reader.listing(src)
    info = inspect_source(src, listing)
    try:
        read = reader.plan(src, cfg.partition_rows, listing, since)
        fp = source_fingerprint(cfg, listing)
        if since is not None:  # the rows past the marker: a data set folder of their own
            fp = json_digest(fp, since, read.marker)[:16]
        folder = stores.data_dir / cfg.dataset / fp
        work = folder / f"parts-{uuid.uuid4().hex[:12]}"
        plan = IngestPlan(fp, str(folder), str(work), info, read.parts, stores=stores)
        plan = dataclasses.replace(plan, since=since, marker=read.marker)
        if reader.kind == "array":
            return dataclasses.replace(plan, layout=read.layout, labelled=read.labelled)
        return _table_plan(plan, src)
    except IncrementalUnavailable:
        raise
    except arrays.SourceReadError as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except (ValueError, UnicodeDecodeError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"cannot read {src.path!r}: {str(err).splitlines()[0]}") from None


def _table_plan(plan: IngestPlan, src: SourceConfig) -> IngestPlan:
    """``plan`` with a table's column kinds decided from its first batch, identifier-like
    columns left out of the features (and said), and every partition checked."""
    from tasks.io.tables import TableReader

    info = plan.info
    table = TableReader(src, info.columns, info.features, src.label)
    kinds = table.decide_kinds()
    ids = {c: why for c, why in table.identifiers.items() if c not in (src.include or [])}
    if ids:
        run_logger(log).warning(
            "leaving out %s: they look like identifiers, not features (%s); name one in "
            "source.include to keep it, or in source.entity_id if it is the row's id",
            ", ".join(ids),
            "; ".join(f"{c}: {why}" for c, why in ids.items()),
        )
    if table.times:
        run_logger(log).warning(
            "leaving out %s: times are not features aepipe encodes (%s); name the event "
            "time in source.timestamp, or derive numbers from it in the source",
            ", ".join(table.times),
            "; ".join(f"{c}: {t}" for c, t in table.times.items()),
        )
    left_out = {c: f"identifier-like ({why})" for c, why in ids.items()}
    left_out |= {c: f"a time ({t})" for c, t in table.times.items()}
    if left_out:
        info = dataclasses.replace(info, features=[c for c in info.features if c not in left_out])
        kinds = {c: k for c, k in kinds.items() if c not in left_out}
    needed = [c for c in (src.entity_id, src.timestamp, src.label) if c] + info.features
    extra = info.reader.check_parts(src, plan.parts, needed, kinds)
    if extra:
        run_logger(log).warning(
            "ignoring column(s) %s of %r that its first file lacks (the features are "
            "the first file's columns)",
            extra,
            src.path,
        )
    return dataclasses.replace(plan, info=info, kinds=kinds, left_out=left_out)


def ingest_part(
    plan: IngestPlan, part: IngestPart, cfg: PipelineConfig, along: ReadAlong | None = None
) -> IngestedPart:
    """Read one partition into ``part-NNNNN.parquet`` (entity id, event time, label, features)
    in this run's work folder, its unusable rows into ``part-NNNNN.quarantine.parquet``;
    ``along`` does its work on the rows in the same pass.
    On an object-store ``AEPIPE_DATA`` the files are written under this worker's home and
    uploaded, and the result names them by their object-store URIs (the merge fetches them)."""
    work = rehome(plan.work, plan.stores) if plan.stores else Path(plan.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"part-{part.index:05d}.parquet"
    if plan.info.reader.kind == "array":
        read = _ingest_array_part(plan, part, cfg, path, along)
    else:
        read = _ingest_table_part(plan, part, cfg, path, along)
    qpath = None
    if read.quarantine:
        qpath = path.with_suffix(".quarantine.parquet")
        write_table(_quarantine_table(read.quarantine), qpath)
    refs = [str(path) if read.rows_out else None, str(qpath) if qpath else None, read.normalized]
    if plan.stores is not None:
        here = data_store.here(plan.stores)
        data_store.share(here, *refs)
        refs = [data_store.location(here, f) if f else None for f in refs]
    return IngestedPart(
        part.index,
        refs[0],
        read.rows_in,
        read.rows_out,
        refs[1],
        len(read.quarantine),
        read.digest,
        read.pixel_scale,
        refs[2],
        read.split_rows,
        read.keys,  # (not shared: a merge on a machine without it hashes the ids again)
    )


def _ingest_table_part(
    plan: IngestPlan, part: IngestPart, cfg: PipelineConfig, path: Path, along: ReadAlong | None
) -> _PartRead:
    """Stream a table partition (a CSV file, Parquet row groups, ...) into raw Parquet,
    batch by batch."""
    from tasks.io.tables import TableReader

    src, info = cfg.source, plan.info
    label = src.label
    reader = TableReader(src, info.columns, info.features, label, part, plan.kinds)
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    quarantine: list[tuple[str, str]] = []
    # one partition (a CSV file, a small Parquet source) with rows to type: what reads
    # along (the normalizer's statistics) takes them in this same pass; a source of several
    # partitions is summarized from the merged file
    summary = None
    if along and len(plan.parts) == 1 and all(col in plan.kinds for col in info.features):
        summary = along.table({col: plan.kinds[col] for col in info.features})
    keys = path.with_suffix(".keys") if src.entity_id else None
    try:  # the file encodes a chunk, and the statistics and keys take it in, while the next parses
        # (a source whose text the workers parse keeps every core busy: no thread more)
        overlap = not info.reader.text_values
        with ParquetSink(path) as sink, Background(overlap) as stats, KeyFile(keys) as key_file:
            for chunk in reader.chunks():
                quarantine.extend(chunk.quarantine)
                t = chunk.table
                ts = t["__ts"] if "__ts" in t.column_names else pa.repeat(now, len(t))
                columns = {ENTITY_KEY: t["__id"], EVENT_TIMESTAMP: ts}
                if label:
                    columns[LABEL] = t["__label"]
                columns.update((col, t[col]) for col in info.features)
                table = pa.table(columns)
                sink.write(table)
                if summary is not None:
                    stats.run(summary.add, t["__id"], table)
                if key_file is not None:
                    stats.run(key_file.add, t["__id"], t["__ts"] if src.timestamp else None)
            stats.wait()
            if summary is not None:
                sink.metadata.update(summary.metadata())
    except (ValueError, UnicodeDecodeError) as err:  # pyarrow's ArrowInvalid is a ValueError
        first = str(err).splitlines()[0]
        raise ConfigError(f"cannot read {src.path!r}: {first}") from None
    rows_out = sink.rows
    digest = json_digest(part.files, part.row_groups, rows_out)  # tables: content_digest at merge
    rows_in = reader.rows_in + len(reader.ragged)
    keys_path = str(keys) if keys is not None and rows_out else None
    return _PartRead(rows_out, rows_in, reader.ragged + quarantine, digest, keys=keys_path)


def _ingest_array_part(
    plan: IngestPlan, part: IngestPart, cfg: PipelineConfig, path: Path, along: ReadAlong | None
) -> _PartRead:
    """Decode images (or read an IDX / NPZ array) into raw Parquet, block by block; what
    reads along (normalize's scaled pixels, whose scale is fixed) takes each decoded block, so
    no second pass reads them back. Files are encoded on background threads while the next
    block decodes."""
    digest = ArrayDigest()
    quarantine: list[tuple[str, str]] = []
    rows_in, scale = 0, None
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    with contextlib.ExitStack() as stack:
        blocks = plan.info.reader.blocks(cfg.source, part, plan)
        blocks = stack.enter_context(contextlib.closing(blocks))
        raw = stack.enter_context(ParquetSink(path))
        scaled = None
        if along is not None:
            scaled = stack.enter_context(along.scaled(path.with_suffix(".normalized.parquet")))
        for data in blocks:
            rows_in += len(data.ids) + len(data.quarantine)
            quarantine += data.quarantine
            scale = data.scale
            digest.update(data)
            if not data.ids:
                continue
            roles = {
                ENTITY_KEY: pa.array(data.ids, pa.string()),
                EVENT_TIMESTAMP: pa.repeat(now, len(data.ids)),
            }
            if data.labels is not None:
                roles[LABEL] = pa.array(data.labels)
            pixels = arrays.as_pixels(data)
            if pixels is not None:  # one tensor column of bytes
                raw.write(with_tensor(roles, pixels, TensorSpec("uint8", pixels.shape[1])))
            else:  # an NPZ array of any numbers: a column each, as a table's
                columns = np.ascontiguousarray(data.features.T)  # each a zero-copy slice
                raw.write(with_features(roles, data.columns, columns))
            if scaled is not None:
                scaled.write(data, pixels, roles)
    split_rows = scaled.split_rows if scaled is not None else None
    normalized = str(scaled.path) if split_rows is not None else None
    return _PartRead(
        raw.rows, rows_in, quarantine, digest.hexdigest(), scale, normalized, split_rows
    )


def merge_ingest(
    plan: IngestPlan,
    parts: list[IngestedPart],
    cfg: PipelineConfig,
    along: ReadAlong | None = None,
) -> IngestResult:
    """Join the partitions into ``raw.parquet`` and ``quarantine.parquet``: entity ids found
    in more than one partition are quarantined after their first; rows in = rows written +
    rows quarantined; the run fails when the quarantined share exceeds the configured limit.
    One partition is renamed into place, not copied; ``along`` joins what it wrote."""
    folder, work = Path(plan.folder), Path(plan.work)
    parts = sorted((_fetched(p, plan.stores) for p in parts), key=lambda p: p.index)
    missing = [p.path for p in parts if p.path and not Path(p.path).exists()]
    if missing:
        raise ConfigError(
            f"partition files of an earlier ingest are gone ({missing[0]}); run again with "
            "the cache refreshed (delete the data set's folder under the store)"
        )
    written = [p for p in parts if p.path]
    dups, repeated = {}, []
    if cfg.source.entity_id and written:
        work.mkdir(parents=True, exist_ok=True)  # (the ledger's files; parts may be fetched)
        dups, repeated = cross_part_duplicates(
            [(p.index, p.path, p.keys) for p in written], bool(cfg.source.timestamp), work
        )
    quarantine = [pq.read_table(p.quarantine) for p in parts if p.quarantine]
    if repeated:
        quarantine.append(
            _quarantine_table([(reason.removeprefix("duplicate "), reason) for reason in repeated])
        )
    rows_in = sum(p.rows_in for p in parts)
    n_quarantined = sum(t.num_rows for t in quarantine)
    where = folder / QUARANTINE_FILE
    folder.mkdir(parents=True, exist_ok=True)
    if quarantine:
        write_table(pa.concat_tables(quarantine), where)
    else:
        where.unlink(missing_ok=True)
    try:
        first = None
        if quarantine:
            row = quarantine[0].slice(0, 1).to_pylist()[0]
            first = f"{row['location']}, {row['reason']}"
        _check_quarantine(cfg, rows_in, n_quarantined, where if quarantine else None, first)
    except ConfigError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if len(written) == 1 and not dups:
        os.replace(written[0].path, plan.raw_path)
    else:
        # (what read along in a single pass counted the rows now dropped)
        single_pass = along.metadata_keys if along else ()
        concat_parts([(p.index, p.path) for p in written], dups, plan.raw_path, single_pass)
    split_rows, made = _merge_scaled(plan, written, along) if not dups else (None, [])
    shutil.rmtree(work, ignore_errors=True)
    if plan.stores is not None:  # for every machine, before the result is cached
        data_store.drop(plan.stores, work)
        data_store.share(plan.stores, plan.raw_path, where if quarantine else None, *made)
    reader = plan.info.reader
    digest = reader.merged_digest(cfg.source, [p.digest for p in parts])
    has_label = reader.has_label(cfg.source, plan.info.columns, plan.labelled)
    return IngestResult(
        str(plan.raw_path),
        rows_in - n_quarantined,
        _feature_columns(plan),
        has_label,
        plan.fingerprint,
        digest,
        next((p.pixel_scale for p in parts if p.pixel_scale), None),
        n_quarantined,
        str(where) if quarantine else None,
        split_rows,
        *_roles_and_left_out(plan, cfg),
        plan.marker,
        plan.since,
    )


def _roles_and_left_out(plan: IngestPlan, cfg: PipelineConfig) -> tuple[dict, dict]:
    """Which source columns play a role, and which were left out of the features and why:
    for the run's summary, which lists every column."""
    src, info = cfg.source, plan.info
    label = info.reader.label(src, info.columns)
    named = {src.entity_id: "entity id", src.timestamp: "event time", label: "label"}
    roles = {c: role for c, role in named.items() if c}
    left_out = dict(plan.left_out)
    for c in info.columns:
        if c in roles or c in info.features or c in left_out:
            continue
        left_out[c] = "source.exclude" if c in src.exclude else "not in source.include"
    return roles, left_out


def _fetched(part: IngestedPart, origin: Stores | None) -> IngestedPart:
    """``part`` with its files here (fetched from the object store where a worker of another
    machine wrote them); a file that cannot be fetched keeps its name, for the merge to report."""
    if origin is None:
        return part
    files = {}
    for name in ("path", "quarantine", "normalized"):
        ref = getattr(part, name)
        try:
            files[name] = data_store.arrive(ref, origin)
        except FileNotFoundError:
            files[name] = ref
    return dataclasses.replace(part, **files)


def _merge_scaled(
    plan: IngestPlan, written: list[IngestedPart], along: ReadAlong | None
) -> tuple[dict[str, int] | None, list[Path]]:
    """Join what read along wrote of each partition's fixed-scale rows: the rows per split
    and the files made, or (None, []) when a partition has none (normalize then reads
    raw.parquet instead)."""
    parts = [p.normalized for p in written]
    if along is None or not written or not all(p and Path(p).exists() for p in parts):
        return None, []
    scale = written[0].pixel_scale
    made = along.merge_scaled(Path(plan.folder), _feature_columns(plan), scale, parts)
    return {k: sum(p.split_rows[k] for p in written) for k in SPLITS}, made


def _feature_columns(plan: IngestPlan) -> list[str]:
    if plan.layout is not None:
        return arrays.pixel_columns(plan.layout.shape)
    return plan.info.features


def _check_quarantine(
    cfg: PipelineConfig,
    rows_in: int,
    quarantined: int,
    where: Path | None,
    first: str | None = None,
) -> None:
    if rows_in == 0:
        raise ConfigError(f"source {cfg.source.path!r} has no rows")
    share = quarantined / rows_in
    if share > cfg.source.max_quarantine_fraction:
        raise ConfigError(
            f"{quarantined} of {rows_in} rows ({share:.1%}) of {cfg.source.path!r} were "
            f"quarantined, more than source.max_quarantine_fraction "
            f"{cfg.source.max_quarantine_fraction:.1%}"
            + (f" (the first: {first})" if first else "")
            + f"; see {where}"
        )
    if quarantined == rows_in:
        raise ConfigError(f"no usable rows in {cfg.source.path!r}; see {where}")


def ingest_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of a merged ingest: the data set's folder, named by the store, the
    data set and the source's fingerprint."""
    plan = parameters["plan"]
    return "aepipe-ingest-" + json_digest(_where(plan, plan.folder))


def ingest_part_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of one ingest partition: the fingerprinted folder and its slice."""
    plan, part = parameters["plan"], parameters["part"]
    return "aepipe-ingest-part-" + json_digest(
        _where(plan, plan.folder), part.files, part.row_groups
    )


def _where(plan: IngestPlan, path: str) -> str:
    """``path`` as every machine names it: its object-store URI on an object-store
    ``AEPIPE_DATA`` (so two homes share cached results), else the path."""
    return data_store.location(plan.stores, path) if plan.stores else path


# Cached by Prefect across runs: results persist as JSON (never pickles) in Prefect's result
# storage, so a scheduled run on an unchanged source reads nothing again. The plan is not
# cached (it is cheap, and names this run's work folder); partitions and the merge are.
_persisted = {"persist_result": True, "result_serializer": "json"}
plan_ingest_task = io_task("plan-ingest")(plan_ingest)
ingest_part_task = io_task("ingest-partition")(ingest_part).with_options(
    cache_key_fn=ingest_part_cache_key, **_persisted
)
merge_ingest_task = io_task("merge-ingest")(merge_ingest).with_options(
    cache_key_fn=ingest_cache_key, **_persisted
)
