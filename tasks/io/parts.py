"""Joining an ingest's partition files: keys repeated across partitions, and the partitions'
row groups copied into one Parquet file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP
from tasks.config import ConfigError
from tasks.io.parquet import write_options


def cross_part_duplicates(
    parts: list[tuple[int, str]], versioned: bool
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Per part, a mask of rows whose key an earlier part already has (kept there), and the
    quarantine reasons of those rows in order. The key is the entity id, or the (entity id,
    event time) pair when the source has a timestamp column (``versioned``)."""
    from tasks.io.tables import duplicate_reason, version_keys

    seen = pd.Index([], dtype=object)
    masks: dict[int, np.ndarray] = {}
    repeated: list[str] = []
    columns = [ENTITY_KEY, EVENT_TIMESTAMP] if versioned else [ENTITY_KEY]
    for index, path in parts:
        frame = pq.read_table(path, columns=columns).to_pandas()
        ids = frame[ENTITY_KEY].astype("string")
        ts = frame[EVENT_TIMESTAMP] if versioned else None
        keys = version_keys(ids, ts) if ts is not None else ids
        dup = seen.get_indexer(keys) >= 0 if len(seen) else np.zeros(len(keys), bool)
        if dup.any():
            masks[index] = dup
            repeated += [duplicate_reason(ids.iloc[i], ts, i) for i in np.flatnonzero(dup)]
        seen = seen.append(pd.Index(keys[~dup].to_numpy(dtype=object)))
    return masks, repeated


def concat_parts(parts: list[tuple[int, str]], dups: dict[int, np.ndarray], out: Path) -> None:
    """Copy the partitions' row groups (files by partition index) into one Parquet file,
    dropping duplicate rows."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for index, path in parts:
            pf = pq.ParquetFile(path)
            offset = 0
            for g in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(g)
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
