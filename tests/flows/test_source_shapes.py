"""Sources that change shape after a model was trained (issue 22.4): each change has a
defined outcome, and nothing is scored silently wrong. Nothing is written when a run fails.

- columns reordered: scored by name (Parquet and CSV);
- a column gained: ignored, with a warning naming it;
- a column lost: a one-line error naming it (and the file, for Parquet);
- numbers turned text: each value is checked (text that parses as a number is one); rows
  that do not parse are quarantined, and past source.max_quarantine_fraction the run fails
  naming the first (Parquet and CSV);
- text turned numbers: Parquet, a one-line error naming both types; a CSV rewritten with a
  number column, a one-line error (text then, number now); new CSV rows with numbers in a
  text column, unseen levels: flagged, and the drift check names the column.

Images of another mode or size: tests/tasks/io/test_sources.py (converted to the model's
mode; quarantined, or resized with source.image_size).
"""

from __future__ import annotations

import pandas as pd
import pytest

from feature_store import load_table, read_features
from flows.reduce_features import reduce_features
from flows.score_features import score_features
from tasks.config import ConfigError, build_config
from tests.conftest import orders_frame

pytestmark = pytest.mark.slow


def config(home, path):
    return build_config(
        {
            "home": str(home),
            # not "orders": tests/flows/test_drift.py reads that one's events and artifacts
            "dataset": "shapes",
            "source": {"path": str(path), "entity_id": "order_id", "timestamp": "ts"},
            "model": {"code_size": 2},
            "train": {"epochs": 4, "patience": 0, "lr": 3e-3},
        }
    )


@pytest.fixture(scope="module")
def parquet_home(prefect_server, tmp_path_factory):
    """A champion trained on a Parquet folder's first file (800 orders)."""
    base = tmp_path_factory.mktemp("parquet-shapes")
    src = base / "src"
    src.mkdir()
    orders_frame(800, 0, 1).to_parquet(src / "part-0.parquet", index=False)
    reduce_features(config(base / "home", src))
    return base / "home", src


@pytest.fixture(scope="module")
def csv_home(prefect_server, tmp_path_factory):
    """A champion trained on a CSV file (800 orders)."""
    base = tmp_path_factory.mktemp("csv-shapes")
    path = base / "orders.csv"
    orders_frame(800, 0, 1).to_csv(path, index=False)
    reduce_features(config(base / "home", path))
    return base / "home", path


def fails_and_writes_nothing(home, path, message: str) -> None:
    table = load_table("shapes", home=home)
    before = (table.current_snapshot().snapshot_id, len(read_features("shapes", home=home)))
    with pytest.raises(ConfigError, match=message):
        score_features(config(home, path))
    table = load_table("shapes", home=home)
    after = (table.current_snapshot().snapshot_id, len(read_features("shapes", home=home)))
    assert after == before


def test_parquet_columns_are_matched_by_name_and_new_ones_ignored(parquet_home, caplog) -> None:
    import mlflow

    from stores import resolve_stores

    home, src = parquet_home
    later = orders_frame(200, 800, 2)
    later[list(reversed(later.columns))].assign(coupon=0.5).to_parquet(
        src / "part-1.parquet", index=False
    )
    with caplog.at_level("WARNING"):
        score_features(config(home, src))
    assert "ignoring column(s) ['coupon']" in caplog.text and "its first file lacks" in caplog.text
    rows = read_features("shapes", home=home).set_index("entity_id").loc[later["order_id"]]
    assert len(rows) == 200
    mlflow.set_tracking_uri(resolve_stores(home).tracking_uri)
    model = mlflow.pyfunc.load_model("models:/aepipe-shapes@champion")
    expected = model.predict(later.rename(columns={"order_id": "entity_id"}).drop(columns="ts"))
    assert rows["z_0"].to_numpy() == pytest.approx(expected["z_0"].to_numpy(), abs=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["items"]), r"part-9.parquet' lacks column\(s\) \['items'\]"),
        (
            lambda f: f.assign(items=[f"n{i}" for i in range(len(f))]),
            r"\(the first: row \d+, column 'items' has non-numeric value 'n0'\)",
        ),
        (
            lambda f: f.assign(region=[i % 3 for i in range(len(f))]),
            r"column 'region' is (large_)?string in '.*part-0.parquet' but int64 in",
        ),
    ],
    ids=["loses-a-column", "number-turns-text", "text-turns-number"],
)
def test_a_parquet_file_of_another_shape_fails_naming_it(parquet_home, change, message) -> None:
    home, src = parquet_home
    bad = src / "part-9.parquet"
    change(orders_frame(50, 5000, 3)).to_parquet(bad, index=False)
    try:
        fails_and_writes_nothing(home, src, message)
    finally:
        bad.unlink()


def test_csv_shape_changes(csv_home) -> None:
    home, path = csv_home
    first = orders_frame(800, 0, 1)
    original = path.read_text()
    try:
        # a column lost: named, before anything is scored
        first.drop(columns=["items"]).to_csv(path, index=False)
        fails_and_writes_nothing(
            home, path, r"lacks 1 column\(s\) aepipe-shapes v1 was trained on: \['items'\]"
        )
        # a text column rewritten as numbers: the ingest now reads it as a number column
        first.assign(region=[i % 3 for i in range(800)]).to_csv(path, index=False)
        fails_and_writes_nothing(home, path, r"'region' \(text then, number now\)")
        # numbers turned text in new rows: quarantined, the first one named
        later = orders_frame(200, 800, 2)
        pd.concat([first, later.assign(items=[f"n{i}" for i in range(200)])]).to_csv(
            path, index=False
        )
        fails_and_writes_nothing(
            home, path, r"\(the first: row 800, column 'items' has non-numeric value 'n0'\)"
        )
    finally:
        path.write_text(original)
    # new rows whose categories are numbers: unseen levels, flagged, the drift names it
    pd.concat([first, later.assign(region=[i % 3 for i in range(200)])]).to_csv(path, index=False)
    scored = score_features(config(home, path))
    # most flagged (140 of 200 measured; 150+ with the old bce score): an unseen level sets
    # an input the network never saw set and lies beyond every training value, while the
    # isolation forest cannot see it (the input was constant in training)
    assert scored.rows_written == 200 and scored.anomalies > 120
    assert scored.drift.drifted and "region" in scored.drift.drifted_columns


def test_served_rows_with_infinite_or_huge_values(csv_home) -> None:
    """Issue 47.6: the served model answered `Infinity` with `is_anomaly: false` (the pipeline
    quarantines such a row). Now an infinite value is refused naming its row and column, in a
    scoring server or a batch predict alike; a finite 1e308, far outside the training range,
    is scored and flagged, not hidden by the scaling."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from stores import resolve_stores
    from tasks.registry import registry_client

    home, _ = csv_home
    registry_client(resolve_stores(home))
    model = mlflow.pyfunc.load_model("models:/aepipe-shapes@champion")
    rows = orders_frame(6, 5000, 9)
    plain = model.predict(rows)
    assert len(plain) == 6
    infinite = rows.assign(amount=[1.0, 2.0, float("inf"), 3.0, 4.0, 5.0])
    with pytest.raises(MlflowException, match="row 2, column 'amount' holds inf"):
        model.predict(infinite)
    huge = rows.assign(amount=[1.0, 1e308, 2.0, 3.0, 4.0, 5.0])
    scored = model.predict(huge)
    assert bool(scored["is_anomaly"].iloc[1])
    assert scored["anomaly_score"].iloc[1] == scored["anomaly_score"].max()
