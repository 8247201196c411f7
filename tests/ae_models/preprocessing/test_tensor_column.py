"""The tensor column: the feature matrix as one Parquet column, read back without a copy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_models.preprocessing.normalizer import Normalizer, SchemaError, model_input
from ae_models.preprocessing.tensor_column import (
    FEATURES,
    TensorSpec,
    as_fixed_size_list,
    batch_matrix,
    find_tensor,
    tensor_array,
    tensor_floats,
    tensor_spec,
    tensor_values,
    to_wide,
)
from ae_models.training.streaming import ParquetSource
from tasks.io.parquet import ParquetSink, with_tensor


def _roles(n: int) -> dict[str, pa.Array]:
    return {
        "entity_id": pa.array([f"r{i}" for i in range(n)]),
        "split": pa.array(["train" if i % 3 else "test" for i in range(n)]),
    }


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_matrix_survives_parquet_as_one_column(tmp_path, dtype) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((1000, 37)) * 255).astype(dtype)
    spec = TensorSpec(dtype, 37, 255.0 if dtype == "uint8" else None)
    with ParquetSink(tmp_path / "t.parquet") as sink:  # two batches: two chunks on reading
        sink.write(with_tensor(_roles(600), x[:600], spec))
        sink.write(with_tensor(_roles(400), x[600:], spec))
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == ["entity_id", "split", FEATURES]
    assert pa.types.is_fixed_size_binary(table.schema.field(FEATURES).type)
    assert find_tensor(table.schema) == spec  # dtype, width and scale travel in the metadata
    assert np.array_equal(tensor_values(table.column(FEATURES), spec), x)
    one = pq.ParquetFile(tmp_path / "t.parquet").read_row_group(0).column(FEATURES).chunk(0)
    assert np.shares_memory(tensor_values(one, spec), np.frombuffer(one.buffers()[1], np.uint8))
    sliced = tensor_array(x)[250:260]  # an offset into the buffer
    assert np.array_equal(tensor_values(sliced, spec), x[250:260])


def test_scaled_bytes_are_what_the_normalizer_computes_bit_for_bit() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(1, 256)
    for scale in (255.0, 16.0):  # images; scikit-learn's digits (bytes over 16 clip at 1)
        spec = TensorSpec("uint8", 256, scale)
        got = tensor_floats(tensor_array(values), spec)
        normalizer = Normalizer.fit_scaled([f"p{i}" for i in range(256)], scale)
        want = normalizer.scale_matrix(values.astype(np.float32))
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_wide_and_list_views_name_every_position() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = with_tensor(_roles(4), x, TensorSpec("float32", 3))
    wide = to_wide(table, ["a", "b", "c"])
    assert wide.column_names == ["entity_id", "split", "a", "b", "c"]
    assert wide.column("b").to_pylist() == [1.0, 4.0, 7.0, 10.0]
    lists = as_fixed_size_list(table.column(FEATURES).chunk(0), find_tensor(table.schema))
    assert lists.type == pa.list_(pa.float32(), 3) and lists[2].as_py() == [6.0, 7.0, 8.0]
    with pytest.raises(ValueError, match="2 names for the 3 features"):
        to_wide(table, ["a", "b"])


def test_a_column_whose_bytes_disagree_with_its_metadata_is_refused() -> None:
    field = TensorSpec("float32", 3).field().with_type(pa.binary(10))
    with pytest.raises(ValueError, match="not a tensor column aepipe can read"):
        tensor_spec(field)
    assert tensor_spec(pa.field("x", pa.binary(12))) is None  # no metadata: a user's bytes
    with pytest.raises(ValueError, match="has no tensor column"):
        batch_matrix(pa.table({"x": [1.0]}))


def test_training_streams_the_rows_of_one_split(tmp_path) -> None:
    x = np.arange(300 * 5, dtype=np.float32).reshape(300, 5)
    path = tmp_path / "n.parquet"
    with ParquetSink(path) as sink:
        for start in range(0, 300, 100):  # three row groups
            part = slice(start, start + 100)
            roles = {"split": pa.array(["train" if i % 3 else "test" for i in range(300)][part])}
            sink.write(with_tensor(roles, x[part], TensorSpec("float32", 5)))
    reader = ParquetSource(str(path), (FEATURES,), ("split", "test")).reader()
    assert reader.width == 5
    rows = np.concatenate([reader.read(block) for block, _ in reader.blocks()])
    assert np.array_equal(np.sort(rows[:, 0]), x[::3, 0])
    assert rows.flags.writeable


def test_scoring_input_of_tensor_pixels_equals_that_of_pixel_columns() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    names = [f"pixel_{i}" for i in range(16)]
    normalizer = Normalizer.fit_scaled(names, 255.0)
    tensor = with_tensor(_roles(50), pixels, TensorSpec("uint8", 16))
    wide = pa.table({n: pixels[:, i] for i, n in enumerate(names)})
    got = np.asarray(model_input(tensor.to_batches()[0], normalizer))
    assert np.array_equal(got, np.asarray(model_input(wide.to_batches()[0], normalizer)))
    other = Normalizer.fit_scaled(names[:8], 255.0)
    with pytest.raises(SchemaError, match="holds 16 features in its 'features' column"):
        model_input(tensor.to_batches()[0], other)
