"""Joining an ingest's partition files: keys repeated across partitions, and the partitions'
row groups copied into one Parquet file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP
from tasks.errors import ConfigError
from tasks.io.parquet import write_options


def cross_part_duplicates(
    parts: list[tuple[int, str, str | None]], versioned: bool, work: Path
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Per part, a mask of rows whose key an earlier row already has (in an earlier part,
    or earlier in the same one: the readers leave repeats to this check), and the
    quarantine reasons of those rows in order. The key is the entity id, or the (entity id,
    event time) pair when the source has a timestamp column (``versioned``). Each part is
    (index, Parquet file, the file of its rows' key hashes when its ingest left one here);
    the keys go in batches into a :class:`~tasks.io.keys.KeyLedger` under ``work``, so
    memory stays bounded whatever the number of rows."""
    from tasks.io.keys import KeyLedger, key_hashes

    columns = [ENTITY_KEY, EVENT_TIMESTAMP] if versioned else [ENTITY_KEY]
    sizes: list[int] = []
    with KeyLedger(work) as ledger:
        for _, path, keys in parts:
            pf = pq.ParquetFile(path)
            sizes.append(pf.metadata.num_rows)
            if keys and os.path.exists(keys) and os.path.getsize(keys) == 16 * sizes[-1]:
                with open(keys, "rb") as fh:  # read, not mapped: mapped pages count as RSS
                    while block := fh.read(16 << 18):
                        ledger.add(np.frombuffer(block, np.uint64).reshape(-1, 2))
                continue
            for batch in pf.iter_batches(batch_size=1 << 18, columns=columns):
                ts = batch.column(EVENT_TIMESTAMP) if versioned else None
                ledger.add(key_hashes(batch.column(ENTITY_KEY), ts))
        rows = ledger.repeats()
    masks: dict[int, np.ndarray] = {}
    reasons: list[str] = []
    start = 0
    for (index, path, _), n in zip(parts, sizes, strict=True):
        here = rows[(rows >= start) & (rows < start + n)] - start
        start += n
        if not len(here):
            continue
        masks[index] = np.zeros(n, dtype=bool)
        masks[index][here] = True
        reasons += _duplicate_reasons(path, here, versioned)
    return masks, reasons


def _duplicate_reasons(path: str, rows: np.ndarray, versioned: bool) -> list[str]:
    """The quarantine reasons of a part file's ``rows`` (repeated keys)."""
    from tasks.io.tables import duplicate_reason

    columns = [ENTITY_KEY, EVENT_TIMESTAMP] if versioned else [ENTITY_KEY]
    pf = pq.ParquetFile(path)
    taken, start = [], 0  # (only the row groups that hold some: the file may be large)
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        here = rows[(rows >= start) & (rows < start + n)] - start
        if len(here):
            taken.append(pf.read_row_group(g, columns=columns).take(pa.array(here)))
        start += n
    picked = pa.concat_tables(taken).to_pandas()
    ids = picked[ENTITY_KEY].astype("string")
    ts = picked[EVENT_TIMESTAMP] if versioned else None
    return [duplicate_reason(ids.iloc[i], ts, i) for i in range(len(picked))]


def concat_parts(
    parts: list[tuple[int, str]],
    dups: dict[int, np.ndarray],
    out: Path,
    drop_keys: tuple[str, ...] = (),
) -> None:
    """Copy the partitions' row groups (files by partition index) into one Parquet file,
    dropping duplicate rows, and the files' metadata entries ``drop_keys`` (what no longer
    holds of the rows kept)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for index, path in parts:
            pf = pq.ParquetFile(path)
            offset = 0
            for g in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(g)
                if drop_keys and table.schema.metadata:
                    kept = {
                        k: v
                        for k, v in table.schema.metadata.items()
                        if k.decode() not in drop_keys
                    }
                    table = table.replace_schema_metadata(kept)
                if index in dups:
                    keep = ~dups[index][offset : offset + table.num_rows]
                    table = table.filter(pa.array(keep))
                offset += pf.metadata.row_group(g).num_rows
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, **write_options(table.schema))
                try:
                    writer.write_table(table.cast(writer.schema))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
                    raise ConfigError(
                        f"the source's files disagree on column types ({path}): {err}"
                    ) from None
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    os.replace(tmp, out)


def reason_kinds(quarantine_path: str | None, top: int = 3) -> str:
    """The commonest kinds of reason in a quarantine file, counted (``2 x column … has
    non-numeric value …``: quoted values as ``…``, numbers as ``N``); '' without a file."""
    if not quarantine_path or not os.path.isfile(quarantine_path):
        return ""
    import re
    from collections import Counter

    texts = pq.read_table(quarantine_path, columns=["reason"]).column("reason").to_pylist()
    kinds = Counter(
        re.sub(r"\d+", "N", re.sub(r"'[^']*'", "…", str(t))).split(":")[0] for t in texts
    )
    shown = ", ".join(f"{n} x {kind}" for kind, n in kinds.most_common(top))
    return shown + (", …" if len(kinds) > top else "")
