"""Ingest and normalize: digits and CSV become Parquet with roles, splits and a spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_models.preprocessing.normalizer import Normalizer
from ae_models.preprocessing.tensor_column import (
    FEATURES,
    TensorSpec,
    batch_matrix,
    find_tensor,
    tensor_values,
    to_wide,
)
from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.io.sources import inspect_source
from tasks.io.splits import assign_splits
from tasks.normalize import normalize_dataset
from tasks.validate import validate_config


def test_digits_become_normalized_parquet(tmp_stores) -> None:
    cfg = build_config({})
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.rows == 1797 and len(ingested.features) == 64 and ingested.has_label
    data = normalize_dataset(ingested, cfg)
    table = pq.read_table(data.path)
    assert table.num_rows == 1797
    assert table.column_names[:4] == ["entity_id", "event_timestamp", "label", "split"]
    assert str(table.schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
    assert table.column_names[4:] == [FEATURES]  # the feature matrix: one column
    spec = find_tensor(table.schema)
    assert spec == TensorSpec("uint8", 64, 16.0)  # the digits' bytes, exactly, and their scale
    values = batch_matrix(table)
    assert values.shape == (1797, 64) and values.min() == 0.0 and values.max() == 1.0
    raw = pq.read_table(ingested.path)
    assert find_tensor(raw.schema) == TensorSpec("uint8", 64)  # raw: the same bytes, unscaled
    stored = tensor_values(table.column(FEATURES), spec)
    assert np.array_equal(tensor_values(raw.column(FEATURES), spec), stored)
    assert sum(data.split_rows.values()) == 1797 and data.split_rows["train"] > 1000
    spec = json.loads(Path(data.spec_path).read_text())
    assert spec["version"] == 1 and len(spec["columns"]) == 64
    assert "label" not in data.features


def test_csv_with_roles_and_missing_values(tmp_path, tmp_stores) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        "id, when, age, city, income, y\n"
        "a, 2024-01-01, 30, x, 10.5, 0\n"
        "b, 2024-01-02, ?, y, 12.0, 1\n"
        "c, 2024-01-03, 50, ?, 9.0, 0\n"
        "d, 2024-01-04, 41, x, 11.0, 1\n"
    )
    cfg = build_config(
        {
            "dataset": "people",
            "source": {"path": str(path), "entity_id": "id", "timestamp": "when", "label": "y"},
            "model": {"code_size": 2},
            "test_fraction": 0.2,
            "val_fraction": 0.1,
        }
    )
    validate_config(cfg)
    ingested = ingest_source(cfg, tmp_stores)
    assert ingested.features == ["age", "city", "income"]
    raw = pq.read_table(ingested.path).to_pandas()
    assert raw["entity_id"].tolist() == ["a", "b", "c", "d"]
    assert raw["event_timestamp"].iloc[1] == pd.Timestamp("2024-01-02", tz="UTC")
    assert np.isnan(raw["age"].iloc[1])


def test_missing_cells_are_imputed_with_the_training_median_and_an_indicator(
    tmp_path, tmp_stores
) -> None:
    """NaN, '?' and empty cells are missing: a numeric column gets the training split's
    median and, when the training split has missing values in it, an indicator column
    ``<name>__missing``; a missing category is its own one-hot level."""
    rows = ["id,age,city,income"]
    for i in range(60):
        age = ("?", "", "NaN")[i % 3] if i % 4 == 0 else str(20 + i)
        city = "" if i % 5 == 0 else ("x", "y")[i % 2]
        rows.append(f"r{i},{age},{city},{1000 + 10 * i}")
    path = tmp_path / "people.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = build_config({"source": {"path": str(path), "entity_id": "id"}})
    data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
    spec = {c.source: c for c in Normalizer.load(data.spec_path).columns}
    assert spec["age"].missing_indicator == "age__missing"
    assert spec["income"].missing_indicator is None  # nothing missing, no indicator
    norm = to_wide(pq.read_table(data.path), data.features).to_pandas().set_index("entity_id")
    missing = [f"r{i}" for i in range(60) if i % 4 == 0]
    assert norm.loc[missing, "age__missing"].eq(1.0).all()
    assert norm["age__missing"].sum() == len(missing)
    train = [f"r{i}" for i in range(60) if i % 4 and norm.loc[f"r{i}", "split"] == "train"]
    age = spec["age"]
    assert age.fill == pytest.approx(np.median([20 + int(r[1:]) for r in train]))
    filled = (age.fill - age.low) / (age.high - age.low)
    assert norm.loc[missing, "age"].to_numpy() == pytest.approx(filled)
    empty_city = [f"r{i}" for i in range(60) if i % 5 == 0]
    assert norm.loc[empty_city, "city=__missing__"].eq(1.0).all()
    assert norm["city=__missing__"].sum() == len(empty_city)


def test_splits_are_stable_and_seeded() -> None:
    ids = pd.Series([str(i) for i in range(5000)])
    a = assign_splits(ids, 0.2, 0.1, seed=0)
    assert (a == assign_splits(ids, 0.2, 0.1, seed=0)).all()
    assert abs((a == "test").mean() - 0.2) < 0.03 and abs((a == "val").mean() - 0.1) < 0.03
    assert (a != assign_splits(ids, 0.2, 0.1, seed=1)).any()
    # adding rows does not move existing ones
    more = assign_splits(pd.Series([str(i) for i in range(6000)]), 0.2, 0.1, seed=0)
    assert (more[:5000] == a).all()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"path": "missing.csv"}, "source file 'missing.csv' does not exist"),
        ({"path": "{csv}", "label": "nope"}, "source.label column 'nope' is not in"),
        ({"path": "{csv}", "exclude": ["a", "b"]}, "no feature columns left"),
    ],
)
def test_inspect_source_errors(tmp_path, source, message) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    source = {k: (v.format(csv=csv) if isinstance(v, str) else v) for k, v in source.items()}
    with pytest.raises(ConfigError, match=message):
        inspect_source(build_config({"source": source}).source)


def test_duplicate_entity_ids_are_quarantined(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("id,a,b\n1,1,2\n1,3,4\n2,5,6\n")
    src = {"path": str(csv), "entity_id": "id"}
    cfg = build_config({"source": src, "model": {"code_size": 1}})
    with pytest.raises(ConfigError, match=r"1 of 3 rows \(33.3%\).*see .*quarantine.parquet"):
        ingest_source(cfg, tmp_stores)
    lenient = build_config(
        {"source": {**src, "max_quarantine_fraction": 0.5}, "model": {"code_size": 1}}
    )
    ingested = ingest_source(lenient, tmp_stores)
    assert ingested.rows == 2 and ingested.quarantined == 1
    assert pq.read_table(ingested.quarantine_path).to_pylist() == [
        {"location": "entity id '1'", "reason": "duplicate entity id '1'"}
    ]


def test_a_duplicate_far_apart_in_one_file_is_found_and_the_fit_redone(
    tmp_path, tmp_stores, monkeypatch
) -> None:
    """A repeated id in another batch of the same file is found at the merge (its key
    ledger holds every key on disk, a slice of the hash space at a time); the normalizer
    the ingest's pass fitted counted it, so it is dropped and normalize fits afresh."""
    from tasks.io.readers import lines_base
    from tasks.normalize import FIT_KEY

    monkeypatch.setattr(lines_base, "BLOCK_BYTES", 256)  # dozens of batches
    csv = tmp_path / "t.csv"
    rows = [f"u{i},{i % 10},{'ab'[i % 2]}" for i in range(400)]
    rows.append("u3,1000000,a")  # u3 again, 397 rows later, with an outlying value
    csv.write_text("id,x,k\n" + "\n".join(rows) + "\n")
    src = {"path": str(csv), "entity_id": "id", "max_quarantine_fraction": 0.01}
    cfg = build_config({"source": src, "model": {"code_size": 1}})
    ingested = ingest_source(cfg, tmp_stores)
    assert (ingested.rows, ingested.quarantined) == (400, 1)
    assert pq.read_table(ingested.quarantine_path).column("reason").to_pylist() == [
        "duplicate entity id 'u3'"
    ]
    raw = pq.ParquetFile(ingested.path)
    assert FIT_KEY.encode() not in (raw.metadata.metadata or {})
    assert raw.read(columns=["x"])["x"].to_numpy().max() == 9.0
    spec = json.loads(Path(normalize_dataset(ingested, cfg).spec_path).read_text())
    assert "1000000" not in json.dumps(spec)  # fitted on the rows kept


def test_with_a_timestamp_each_id_and_time_pair_is_a_version(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "customers.csv"
    csv.write_text(
        "id,updated_at,a\n"
        "c1,2026-03-01T08:00:00Z,1\n"
        "c1,2026-03-02T08:00:00Z,2\n"  # an update of c1: a second version, kept
        "c2,2026-03-01T09:00:00Z,3\n"
        "c1,2026-03-02T08:00:00Z,4\n"  # same id, same time: a true duplicate
        + "".join(f"c{i},2026-03-01T10:00:00Z,{i}\n" for i in range(3, 103))
    )
    src = {"path": str(csv), "entity_id": "id", "timestamp": "updated_at"}
    ingested = ingest_source(build_config({"source": src, "model": {"code_size": 1}}), tmp_stores)
    raw = pq.read_table(ingested.path).to_pandas()
    assert ingested.rows == 103 and ingested.quarantined == 1
    c1 = raw[raw["entity_id"] == "c1"].sort_values("event_timestamp")
    assert c1["a"].tolist() == [1.0, 2.0]
    assert pq.read_table(ingested.quarantine_path).to_pylist() == [
        {
            "location": "entity id 'c1' at 2026-03-02T08:00:00+00:00",
            "reason": "duplicate entity id 'c1' at 2026-03-02T08:00:00+00:00",
        }
    ]


def test_versions_and_duplicates_across_partitions(tmp_path, tmp_stores) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    day = pd.DataFrame(
        {"id": [f"c{i}" for i in range(60)], "t": pd.Timestamp("2026-03-01", tz="UTC"), "a": 1.0}
    )
    later = day.head(30).assign(t=pd.Timestamp("2026-03-02", tz="UTC"), a=2.0)
    again = day.head(1)  # a row the first file has: a true duplicate in another partition
    day.to_parquet(folder / "1.parquet")
    pd.concat([later, again]).to_parquet(folder / "2.parquet")
    src = {"path": str(folder), "entity_id": "id", "timestamp": "t", "max_quarantine_fraction": 0.1}
    cfg = build_config({"source": src, "model": {"code_size": 1}, "partition_rows": 1})
    ingested = ingest_source(cfg, tmp_stores)
    assert (ingested.rows, ingested.quarantined) == (90, 1)
    reasons = pq.read_table(ingested.quarantine_path).column("reason").to_pylist()
    assert reasons == ["duplicate entity id 'c0' at 2026-03-01T00:00:00+00:00"]


def test_a_timestamp_column_missing_from_a_later_file_is_named(tmp_path, tmp_stores) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    frame = pd.DataFrame({"id": ["a", "b"], "t": pd.Timestamp("2026-03-01", tz="UTC"), "x": 1.0})
    frame.to_parquet(folder / "1.parquet")
    frame.drop(columns="t").assign(id=["c", "d"]).to_parquet(folder / "2.parquet")
    src = {"path": str(folder), "entity_id": "id", "timestamp": "t"}
    cfg = build_config({"source": src, "model": {"code_size": 1}})
    with pytest.raises(ValueError, match=r"2.parquet' lacks column\(s\) \['t'\]") as err:
        ingest_source(cfg, tmp_stores)
    assert "\n" not in str(err.value)


def test_content_digest_follows_the_bytes(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    cfg = build_config({"source": {"path": str(csv)}, "model": {"code_size": 1}})
    first = ingest_source(cfg, tmp_stores).content_digest
    assert ingest_source(cfg, tmp_stores).content_digest == first
    csv.write_text("a,b\n1,2\n3,5\n")
    assert ingest_source(cfg, tmp_stores).content_digest != first


def test_normalize_settings_are_checked_and_applied(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c\n" + "".join(f"{i},{i * i},{i % 3}\n" for i in range(40)))
    bad = build_config(
        {
            "source": {"path": str(csv)},
            "model": {"code_size": 1},
            "normalize": {"columns": {"zz": "robust"}},
        }
    )
    with pytest.raises(ConfigError, match=r"normalize.columns/log1p name columns .*\['zz'\]"):
        validate_config(bad)
    cfg = build_config(
        {
            "source": {"path": str(csv)},
            "model": {"code_size": 1},
            "normalize": {"scaling": "standard", "log1p": ["b"]},
        }
    )
    validate_config(cfg)
    data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
    values = batch_matrix(pq.read_table(data.path))[:, data.features.index("a")]
    assert values.min() < 0 < values.max()  # standardized, not squeezed into [0, 1]
    from ae_models.preprocessing.normalizer import Normalizer
    from tasks.train import build_model

    assert not Normalizer.load(data.spec_path).unit_range
    assert build_model(cfg, 3, unit_range=False).config.output == "linear"
    assert build_model(cfg, 3, unit_range=True).config.output == "sigmoid"


def test_normalized_rows_keep_their_split_across_small_write_batches(
    tmp_path, tmp_stores, monkeypatch
) -> None:
    """The normalized file is written in batches of about WRITE_BATCH_BYTES of features (row
    groups), another size than the split pass reads: each row still gets its own split."""
    monkeypatch.setattr("tasks.normalize.WRITE_BATCH_BYTES", 4096)
    path = tmp_path / "t.csv"
    path.write_text("id,a,b\n" + "".join(f"r{i},{i},{'xyz'[i % 3]}\n" for i in range(3000)))
    cfg = build_config({"source": {"path": str(path), "entity_id": "id"}})
    data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
    assert pq.ParquetFile(data.path).metadata.num_row_groups > 2
    table = pq.read_table(data.path)
    ids = table.column("entity_id").to_pandas()
    want = assign_splits(ids, cfg.test_fraction, cfg.val_fraction, cfg.train.seed)
    assert (table.column("split").to_numpy(zero_copy_only=False) == want).all()
    a = batch_matrix(table)[:, data.features.index("a")]
    spec = {c.source: c for c in Normalizer.load(data.spec_path).columns}["a"]
    want = (ids.str[1:].astype(int) - spec.low) / (spec.high - spec.low)  # beyond: unclipped
    assert np.allclose(a, want)  # each row its own values


def test_splits_do_not_move_between_aepipe_versions() -> None:
    """Pinned: the splits aepipe has always given these ids (a faster hash must give them
    too), from pandas text and from Arrow alike."""
    ids = [str(i) for i in range(30)] + ["Tromsø", "r1", "a/b/c.png", "ID-000123"]
    pinned = "rraeeeeaeeeeeearrreaaereerrrrrerre"  # t(r)ain, t(e)st, v(a)l
    for given in (pd.Series(ids), pa.array(ids), pa.chunked_array([ids[:5], ids[5:]])):
        assert "".join(s[1] for s in assign_splits(given, 0.3, 0.2, seed=7)) == pinned


def test_a_table_is_fitted_in_the_ingest_pass_as_normalize_would_fit_it(
    tmp_path, tmp_stores
) -> None:
    """One pass: the ingest of a one-partition table fits the normalizer as it reads, and
    normalize then only transforms. The result is what normalize's own pass gives; other
    normalize settings on the same (cached) ingest are not served the ingest's fit."""
    from tasks.normalize import FIT_KEY

    rng = np.random.default_rng(0)
    csv = tmp_path / "t.csv"
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(500) < 0.1, np.nan, rng.exponential(2, 500)),
            "city": rng.choice(["a", "b", "c"], 500),
            "flag": rng.choice(["true", "false"], 500),
        }
    )
    frame.to_csv(csv, index=False)
    cfg = build_config({"source": {"path": str(csv)}, "model": {"code_size": 1}})
    ingested = ingest_source(cfg, tmp_stores)
    assert FIT_KEY.encode() in pq.ParquetFile(ingested.path).metadata.metadata
    one_pass = normalize_dataset(ingested, cfg)
    spec_one = Path(one_pass.spec_path).read_text()
    table_one = pq.read_table(one_pass.path)
    # the same raw rows without the ingest's fit: normalize summarizes them itself
    raw = pq.read_table(ingested.path)
    pq.write_table(raw.replace_schema_metadata(None), ingested.path)
    assert FIT_KEY.encode() not in (pq.ParquetFile(ingested.path).metadata.metadata or {})
    two_pass = normalize_dataset(ingested, cfg)
    assert Path(two_pass.spec_path).read_text() == spec_one
    assert pq.read_table(two_pass.path).equals(table_one)
    assert one_pass.split_rows == two_pass.split_rows
    # another scaling on the (cached) ingest's min-max fit: fitted again, with its scaling
    ingested = ingest_source(cfg, tmp_stores)
    standard = build_config(
        {
            "source": {"path": str(csv)},
            "model": {"code_size": 1},
            "normalize": {"scaling": "standard"},
        }
    )
    data = normalize_dataset(ingested, standard)
    scalers = {c.source: c.scaler for c in Normalizer.load(data.spec_path).columns}
    assert scalers["x"] == "standard"


def test_identifier_columns_are_left_out_named_and_can_be_brought_back(
    tmp_path, tmp_stores, caplog
) -> None:
    """Issue 42: without --entity-id, a unique customer id became a one-hot feature of 20
    arbitrary ids. Text unique in nearly every row, and whole numbers counting along under
    an id's name, are left out with a warning; a unique count under another name, and a
    column of repeated values, stay; source.include brings one back."""
    path = tmp_path / "c.csv"
    rows = [f"C-{i:05d},{1000 + i},{i * 3},{i % 9},{'xy'[i % 2]}" for i in range(400)]
    path.write_text("customer_id,row_no,visits,age,kind\n" + "\n".join(rows) + "\n")
    cfg = build_config({"source": {"path": str(path)}, "dataset": "c"})
    with caplog.at_level("WARNING"):
        ingested = ingest_source(cfg, tmp_stores)
    assert ingested.features == ["visits", "age", "kind"]
    assert set(ingested.left_out) == {"customer_id", "row_no"}
    assert ingested.left_out["customer_id"].startswith("identifier-like (400 of 400")
    assert "leaving out customer_id, row_no" in caplog.text and "source.include" in caplog.text
    kept = build_config(
        {"source": {"path": str(path), "include": ["row_no", "age"]}, "dataset": "c2"}
    )
    again = ingest_source(kept, tmp_stores)
    assert again.features == ["row_no", "age"] and again.left_out == {
        "customer_id": "not in source.include",
        "visits": "not in source.include",
        "kind": "not in source.include",
    }


def test_the_run_summary_lists_every_source_column(tmp_path, tmp_stores) -> None:
    from tasks.report import describe_columns

    path = tmp_path / "p.csv"
    rows = [f"p{i},2024-01-01,{i % 40},{'abc'[i % 3]},{'tf'[i % 2]},{i},n{i}" for i in range(300)]
    path.write_text("pid,seen,age,city,member,y,note\n" + "\n".join(rows) + "\n")
    src = {"path": str(path), "entity_id": "pid", "timestamp": "seen", "label": "y"}
    cfg = build_config({"source": {**src, "exclude": ["note"]}, "dataset": "p"})
    ingested = ingest_source(cfg, tmp_stores)
    lines = describe_columns(ingested, normalize_dataset(ingested, cfg))
    assert lines == [
        "pid: entity id",
        "seen: event time",
        "y: label",
        "age: number (minmax)",
        "city: one-hot (3 levels + other, missing)",
        "member: boolean",
        "note: left out, source.exclude",
    ]


def test_time_columns_that_are_not_the_event_time_are_left_out_and_said(
    tmp_path, tmp_stores, caplog
) -> None:
    """A Parquet column of times that is not source.timestamp crashed the kind decision
    (no text kernel for times); it is now left out with a warning naming it."""
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(50)],
            "signed_up": pd.date_range("2024-01-01", periods=50, freq="D", tz="UTC"),
            "spend": np.arange(50) * 1.5,
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    cfg = build_config({"source": {"path": str(tmp_path / "t.parquet"), "entity_id": "id"}})
    with caplog.at_level("WARNING"):
        ingested = ingest_source(cfg, tmp_stores)
    assert ingested.features == ["spend"] and ingested.rows == 50
    assert ingested.left_out == {"signed_up": "a time (timestamp[us, tz=UTC])"}
    assert "leaving out signed_up: times are not features" in caplog.text
