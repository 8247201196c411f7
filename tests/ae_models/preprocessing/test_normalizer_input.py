"""The model input of raw Arrow batches: the pixel fast path matches the normalizer exactly;
non-feature columns are named as known or warned about."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ae_models.preprocessing.normalizer import ExtraColumnsWarning, Normalizer, model_input

KNOWN = ("entity_id",)


def test_pixel_fast_path_matches_the_normalizer() -> None:
    rng = np.random.default_rng(0)
    cols = [f"pixel_{i}" for i in range(20)]
    pixels = rng.integers(0, 256, size=(50, 20), dtype=np.uint8)
    batch = pa.RecordBatch.from_pydict(
        {"entity_id": [str(i) for i in range(50)], **{c: pixels[:, j] for j, c in enumerate(cols)}}
    )
    norm = Normalizer.fit_scaled(cols, 255.0)
    fast = model_input(batch, norm, KNOWN)
    slow = norm.transform(pd.DataFrame(pixels, columns=cols))
    assert fast.shape == (50, 20) and fast.dtype.is_floating_point
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(norm.transform_arrow(batch, KNOWN), slow, rtol=1e-6, atol=1e-7)


def test_nulls_and_other_columns_take_the_general_path() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"entity_id": ["a", "b"], "p0": pa.array([3, None], pa.uint8()), "p1": [255, 0]}
    )
    norm = Normalizer.fit_scaled(["p0", "p1"], 255.0)
    out = model_input(batch, norm, KNOWN)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [[3 / 255, 1.0], [0.0, 0.0]], rtol=1e-6)
    table = Normalizer.fit(pd.DataFrame({"age": [20.0, 40.0], "job": ["x", "y"]}))
    mixed = pa.RecordBatch.from_pydict({"entity_id": ["a"], "age": [30.0], "job": ["z"]})
    np.testing.assert_allclose(model_input(mixed, table, KNOWN), [[0.5, 0.0, 0.0, 1.0, 0.0]])


def test_columns_beyond_the_features_are_warned_about_unless_known() -> None:
    table = Normalizer.fit(pd.DataFrame({"age": [20.0, 40.0]}))
    batch = pa.RecordBatch.from_pydict({"entity_id": ["a"], "age": [30.0], "note": ["x"]})
    with pytest.warns(ExtraColumnsWarning, match=r"\['note'\]"):
        model_input(batch, table, KNOWN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model_input(batch.drop_columns(["note"]), table, KNOWN)


@pytest.mark.parametrize("scale", [255.0, 16.0])
def test_bytes_converted_batch_by_batch_score_as_the_whole_matrix(scale) -> None:
    """Scoring takes the pixel tensor column as bytes and converts each model batch as it
    runs (``lazy``): the same inputs, codes and scores as converting the batch at once."""
    import torch

    from ae_models.outputs import score_outputs
    from ae_models.preprocessing.normalizer import ScaledBytes
    from ae_models.preprocessing.tensor_column import TensorSpec, tensor_array
    from ae_models.scoring.scorer import fit_scorer
    from ae_models.variants.registry import create_model

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256 if scale == 255.0 else 17, size=(3000, 64), dtype=np.uint8)
    ids = pa.array([str(i) for i in range(3000)])
    schema = pa.schema([pa.field("entity_id", pa.string()), TensorSpec("uint8", 64).field()])
    batch = pa.RecordBatch.from_arrays([ids, tensor_array(pixels)], schema=schema)
    norm = Normalizer.fit_scaled([f"p{i}" for i in range(64)], scale)
    eager = model_input(batch, norm, KNOWN)
    lazy = model_input(batch, norm, KNOWN, lazy=True)
    assert isinstance(lazy, ScaledBytes) and (lazy.rows, lazy.width) == (3000, 64)
    assert torch.equal(torch.cat(list(lazy.ordered_batches(1024))), eager)
    shuffled = torch.cat(list(lazy.epoch_batches(0, 512, torch.Generator().manual_seed(0))))
    assert not torch.equal(shuffled, eager)  # another order, the same rows
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, eager.tolist()))
    model = create_model("deep", input_dim=64, code_size=4, seed=0).eval()
    scorer, _ = fit_scorer(model, eager, "bce")
    a = score_outputs(model, eager, scorer, device="cpu")
    b = score_outputs(model, lazy, scorer, device="cpu")
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scores, b.scores)
