"""Bad inputs not covered by the reader and normalizer tests: each gets a clear error or goes
to quarantine, and rows in = rows out + rows quarantined. docs/reliability.md has the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ae_models.preprocessing.tensor_column import batch_matrix
from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.normalize import normalize_dataset


def config(path: Path, **top):
    return build_config(
        {"dataset": "bad", "source": {"path": str(path)}, "model": {"code_size": 1}, **top}
    )


def test_a_numeric_looking_column_full_of_text_becomes_categorical(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("amount,x\n" + "".join(f"n/a-{i % 3},{i}\n" for i in range(30)))
    ingested = ingest_source(config(csv), tmp_stores)
    assert (ingested.rows, ingested.quarantined) == (30, 0)  # typed as text: nothing lost
    data = normalize_dataset(ingested, config(csv))
    assert {"amount=n/a-0", "amount=n/a-1", "amount=n/a-2"} <= set(data.features)


def test_a_constant_column_normalizes_to_zeros_not_nan(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("same,x\n" + "".join(f"7,{i}\n" for i in range(40)))
    for scaling in ("minmax", "standard", "robust"):
        cfg = config(csv, normalize={"scaling": scaling})
        data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
        values = batch_matrix(pq.read_table(data.path))[:, data.features.index("same")]
        assert np.isfinite(values).all() and (values == 0).all(), scaling


def test_a_single_row_is_a_clear_error(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    cfg = config(csv)
    ingested = ingest_source(cfg, tmp_stores)
    assert (ingested.rows, ingested.quarantined) == (1, 0)
    with pytest.raises(ConfigError, match=r"fell in the training split \(1 rows in all\); "
                       r"training needs at least 2"):  # fmt: skip
        normalize_dataset(ingested, cfg)


def test_an_unexpected_failure_is_one_line_with_the_trace_in_the_log(aepipe_cli, tmp_path) -> None:
    """Any failure the CLI did not foresee (here MLflow refusing a connection) prints one
    line, credentials blanked, and leaves the full trace, also blanked, in the home's log."""
    env = {
        "AEPIPE_TRACKING_URI": "http://bot:fake-pw-77a1@127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    result = aepipe_cli("models", "list", cwd=tmp_path, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aepipe: error: MlflowException: ")
    log = tmp_path / ".aepipe" / "logs" / "aepipe-error.log"
    assert lines[0].endswith(f"(full trace in {log.resolve()})")
    trace = log.read_text()
    assert "Traceback (most recent call last)" in trace and "127.0.0.1:9" in trace
    assert "fake-pw-77a1" not in trace + result.stderr + result.stdout
