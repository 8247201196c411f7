"""Training rows streamed from Parquet or a memory-mapped array: every row once an epoch, in
an order that depends on the seed and the epoch alone, mixed across row groups, read ahead a
bounded number of blocks, split between ranks, and stopped when the file changes."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import ae_models
from ae_models.estimator import AutoencoderReducer
from ae_models.training import streaming
from ae_models.training.config import TrainConfig
from ae_models.training.streaming import (
    ParquetSource,
    SourceChanged,
    StreamingRows,
    sample_mask,
    sample_rows,
)

ROWS, WIDTH, GROUP = 5000, 6, 500


@pytest.fixture
def table(tmp_path) -> tuple[str, np.ndarray, np.ndarray]:
    """A Parquet file of 5,000 rows in 10 row groups: column ``f0`` holds the row number (so
    a batch tells which rows it holds), a ``split`` column marks about 80 % ``train``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, WIDTH)).astype(np.float32)
    x[:, 0] = np.arange(ROWS)
    split = np.where(rng.random(ROWS) < 0.8, "train", "val")
    path = tmp_path / "rows.parquet"
    columns = {f"f{i}": x[:, i] for i in range(WIDTH)} | {"split": split}
    pq.write_table(pa.table(columns), path, row_group_size=GROUP)
    return str(path), x, split


def _source(path: str, split: str = "train") -> ParquetSource:
    return ParquetSource(path, tuple(f"f{i}" for i in range(WIDTH)), ("split", split))


def _ids(batches) -> list[np.ndarray]:
    return [b[:, 0].numpy().astype(int) for b in batches]


def test_an_epoch_streams_every_selected_row_once(table) -> None:
    path, x, split = table
    rows = _source(path).open(streaming=True, seed=1, shuffle_rows=1200)
    assert isinstance(rows, StreamingRows) and rows.rows == int((split == "train").sum())
    batches = _ids(rows.epoch_batches(1, 64, None))
    seen = np.concatenate(batches)
    assert sorted(seen) == list(np.flatnonzero(split == "train"))
    assert len(batches) == -(-rows.rows // 64)  # ceil: one short batch at most, at the end
    assert all(len(b) == 64 for b in batches[:-1])
    streamed = np.concatenate(list(rows.epoch_batches(1, 64, None)))
    np.testing.assert_array_equal(streamed[:, 1:], x[streamed[:, 0].astype(int), 1:])


def test_the_order_depends_on_seed_and_epoch_alone(table) -> None:
    path, _, _ = table
    one = _source(path).open(streaming=True, seed=1, shuffle_rows=1200)
    two = _source(path).open(streaming=True, seed=1, shuffle_rows=1200)
    first = np.concatenate(_ids(one.epoch_batches(3, 64, None)))
    np.testing.assert_array_equal(first, np.concatenate(_ids(two.epoch_batches(3, 64, None))))
    assert not np.array_equal(first, np.concatenate(_ids(one.epoch_batches(4, 64, None))))
    other = _source(path).open(streaming=True, seed=2, shuffle_rows=1200)
    assert not np.array_equal(first, np.concatenate(_ids(other.epoch_batches(3, 64, None))))


def test_the_buffer_mixes_rows_of_several_row_groups_in_a_batch(table) -> None:
    path, _, _ = table
    rows = _source(path).open(streaming=True, seed=0, shuffle_rows=1500)
    groups = [len(set(ids // GROUP)) for ids in _ids(rows.epoch_batches(1, 64, None))]
    assert np.mean(groups) > 3  # a batch draws from the ~4 row groups its buffer holds
    unshuffled = _source(path).open(streaming=True, seed=0, shuffle_rows=1)
    groups = [len(set(ids // GROUP)) for ids in _ids(unshuffled.epoch_batches(1, 64, None))]
    # a buffer of one block: a batch holds its row group and the last one's leftover rows
    assert np.mean(groups) < 2.5


def test_reading_stays_a_bounded_number_of_blocks_ahead(table, monkeypatch) -> None:
    path, _, _ = table
    rows = _source(path).open(streaming=True, seed=0, shuffle_rows=1)
    reads: list[int] = []
    original = rows.reader.read
    monkeypatch.setattr(rows.reader, "read", lambda b, pf=None: reads.append(1) or original(b, pf))
    batches = rows.epoch_batches(1, 400, None)
    next(batches)
    time.sleep(0.3)  # time for the reader thread to run as far ahead as it may
    assert len(reads) <= 1 + streaming.READ_AHEAD + 1  # the one in use, the queue, one in hand
    batches.close()  # stopping early stops the thread


def test_ranks_share_the_rows_without_overlap(table) -> None:
    path, _, split = table
    shards = [_source(path).open(streaming=True, rank=r, world=2) for r in (0, 1)]
    ids = [np.concatenate(_ids(s.epoch_batches(1, 100, None))) for s in shards]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(np.concatenate(ids)) == list(np.flatnonzero(split == "train"))
    assert abs(shards[0].rows - shards[1].rows) < GROUP  # whole row groups, dealt out
    # one row group only: each rank takes its slice of it
    few = path.replace("rows.parquet", "one.parquet")
    pq.write_table(pq.read_table(path), few, row_group_size=ROWS)
    halves = [_source(few).open(streaming=False, rank=r, world=2).rows for r in (0, 1)]
    assert sum(halves) == int((split == "train").sum()) and min(halves) > 0


def test_a_file_that_changes_while_streaming_stops_training(table) -> None:
    path, _, _ = table
    rows = _source(path).open(streaming=True, seed=0, shuffle_rows=1)
    batches = rows.epoch_batches(1, 100, None)
    next(batches)
    with open(path, "ab") as f:  # appended to in place: not the file training opened
        f.write(b"\0")
    with pytest.raises(SourceChanged, match="changed while training read it"):
        for _ in batches:
            pass


def test_a_uniform_sample_is_bounded_and_in_file_order(table) -> None:
    path, _, split = table
    reader = _source(path).reader()
    take = sample_mask(int((split == "train").sum()), 300, seed=0)
    sample = sample_rows(reader, take)
    assert sample.shape == (300, WIDTH)
    ids = sample[:, 0].astype(int)
    assert list(ids) == sorted(ids) and set(ids) <= set(np.flatnonzero(split == "train"))


def test_streamed_training_learns_like_in_memory_training(table) -> None:
    path, _, split = table
    z = np.random.default_rng(1).normal(size=(ROWS, 2))
    mixed = np.tanh(z @ np.random.default_rng(2).normal(size=(2, WIDTH))).astype(np.float32)
    pq.write_table(
        pa.table({f"f{i}": mixed[:, i] for i in range(WIDTH)} | {"split": split}),
        path,
        row_group_size=GROUP,
    )
    cfg = TrainConfig(epochs=15, batch_size=64, patience=0, device="cpu", precision="fp32")
    losses = {}
    for mode in (False, True):
        model = ae_models.create_model("deep", seed=0, input_dim=WIDTH, code_size=2)
        rows = _source(path).open(streaming=mode, seed=0)
        val = _source(path, "val").open(streaming=mode, seed=0)
        losses[mode] = ae_models.train(model, rows, val, cfg).best_val_loss
    assert losses[True] == pytest.approx(losses[False], rel=0.15)


def test_the_estimator_streams_a_memory_mapped_array(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(4000, 3)) @ rng.normal(size=(3, 12))).astype(np.float32)
    x[:40] += 4  # 1 % anomalies
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    est = AutoencoderReducer(epochs=8, streaming="always", device="cpu", random_state=0)
    est.fit(mapped)
    assert est.decision_scores_.shape == (4000,)
    # in X's order: the anomalies (the first 40 rows) score highest
    assert set(np.argsort(est.decision_scores_)[-40:]) == set(range(40))
    assert est.n_features_in_ == 12
    assert est.transform(x[:5]).shape == (5, est.model_.config.code_size)
    # a budget the array fits in: read into memory as any array
    small = AutoencoderReducer(epochs=2, memory_budget_gb=1.0, device="cpu").fit(mapped)
    assert small.decision_scores_.shape == (4000,)


def test_the_estimator_fits_a_parquet_path(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(3000, 3)) @ rng.normal(size=(3, 8))).astype(np.float32)
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({f"c{i}": x[:, i] for i in range(8)}), path, row_group_size=700)
    est = AutoencoderReducer(epochs=3, streaming="always", device="cpu").fit(str(path))
    assert list(est.feature_names_in_) == [f"c{i}" for i in range(8)]
    assert est.decision_scores_.shape == (3000,)
    assert est.history_ and est.history_[-1]["val_loss"] < est.history_[0]["val_loss"]


def test_the_estimator_names_bad_large_inputs(tmp_path) -> None:
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"]}), text)
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['name'\]"):
        AutoencoderReducer(epochs=1).fit(str(text))
    with pytest.raises(ValueError, match="not of a readable Parquet file"):
        AutoencoderReducer(epochs=1).fit(str(tmp_path / "missing.parquet"))
    x = np.ones((100, 4), np.float32)
    x[57, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"NaN or infinite values .* row 57"):
        AutoencoderReducer(epochs=1, streaming="always").fit(
            np.load(tmp_path / "nan.npy", mmap_mode="r")
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"streaming": "sometimes"}, "streaming must be"),
        ({"memory_budget_gb": 0}, "memory_budget_gb must be > 0"),
        ({"strategy": "fsdp"}, "strategy must be"),
        ({"processes": 0}, "processes must be >= 1"),
        ({"nodes": 2}, "needs rendezvous"),
        ({"collective_timeout": 0}, "collective_timeout must be > 0"),
    ],
)
def test_bad_scale_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_the_memory_budget_decides_when_rows_stream() -> None:
    assert TrainConfig(memory_budget_gb=1).streams(2 << 30, 64 << 30)
    assert not TrainConfig(memory_budget_gb=1).streams(512 << 20, 64 << 30)
    assert TrainConfig().streams(5 << 30, 16 << 30)  # more than a quarter of what is free
    assert not TrainConfig().streams(3 << 30, 16 << 30)
    assert TrainConfig(streaming="always").streams(1, 64 << 30)
    assert not TrainConfig(streaming="never").streams(1 << 40, 1 << 30)


def test_a_read_only_memory_map_scores_without_copying_it_whole(tmp_path) -> None:
    x = np.random.default_rng(0).random((3000, 10)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    model = ae_models.create_model("deep", seed=0, input_dim=10, code_size=3)
    codes, _, _ = ae_models.encode_and_score(model, mapped, batch_size=500, device="cpu")
    expected, _, _ = ae_models.encode_and_score(model, x, batch_size=500, device="cpu")
    np.testing.assert_array_equal(codes, expected)
    assert os.path.getsize(tmp_path / "x.npy") > x.nbytes and torch.is_tensor(
        ae_models.training.loop.as_tensor(mapped[:2])
    )


def test_blocks_are_decoded_once_then_read_from_an_unseen_spill_file(table, monkeypatch) -> None:
    path, _, _ = table
    rows = _source(path).open(streaming=True, seed=0, shuffle_rows=1)
    parquet = rows.reader.reader  # the Parquet reader under the spill
    decoded: list = []
    original = parquet.read
    monkeypatch.setattr(parquet, "read", lambda b, pf=None: decoded.append(b) or original(b, pf))
    first = np.concatenate(list(rows.epoch_batches(1, 100, None)))
    second = np.concatenate(list(rows.epoch_batches(2, 100, None)))
    assert len(decoded) == len(rows.blocks)  # the second epoch decoded nothing
    np.testing.assert_array_equal(
        first[np.argsort(first[:, 0])], second[np.argsort(second[:, 0])]
    )  # the same rows, values and all, in another order
    assert os.listdir(os.path.dirname(path)) == ["rows.parquet"]  # the spill file is unlinked
    with open(path, "ab") as f:  # a change is still caught when the next epoch opens
        f.write(b"\0")
    with pytest.raises(SourceChanged):
        list(rows.epoch_batches(3, 100, None))


def test_without_room_on_disk_every_epoch_decodes(table, monkeypatch) -> None:
    """No spill where the disk has no room: each epoch decodes every block again (counted,
    the same rows each time), and no spill file is made."""
    path, _, _ = table
    full = SimpleNamespace(free=1 << 20)  # 1 MB free beside the source
    monkeypatch.setattr(streaming.shutil, "disk_usage", lambda folder: full)
    made: list = []
    real_file = streaming.tempfile.TemporaryFile
    monkeypatch.setattr(
        streaming.tempfile, "TemporaryFile", lambda *a, **k: made.append(1) or real_file(*a, **k)
    )
    rows = _source(path).open(streaming=True, seed=0, shuffle_rows=1)
    decoded: list = []
    read = streaming.ParquetReader.read
    monkeypatch.setattr(
        streaming.ParquetReader,
        "read",
        lambda self, b, pf=None: decoded.append(b) or read(self, b, pf),
    )
    first = np.concatenate(list(rows.epoch_batches(1, 100, None)))
    assert len(decoded) == len(rows.blocks)
    second = np.concatenate(list(rows.epoch_batches(2, 100, None)))
    assert len(decoded) == 2 * len(rows.blocks)  # the second epoch decoded every block again
    np.testing.assert_array_equal(first[np.argsort(first[:, 0])], second[np.argsort(second[:, 0])])
    assert made == []
