"""The ensemble score's detectors: the isolation forest (JSON), the nearest training codes and
the tail probabilities (.npy), and the estimator's default score that combines them with the
reconstruction error (issue 26)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ae_models import AutoencoderReducer
from ae_models.scoring.detectors import CODES_FILE, FOREST_FILE, TAILS_FILE, Detectors
from ae_models.scoring.isolation import IsolationForest, average_path


def blobs(n: int = 600, width: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, width))
    return (rng.normal(size=(n, 3)) @ basis + 0.1 * rng.normal(size=(n, width))).astype(np.float32)


def test_average_path_is_the_bst_search_length() -> None:
    """c(n) = 2 H(n-1) - 2 (n-1)/n (Liu et al.), with c(1) = 0 and c(2) = 1."""
    harmonic = sum(1 / i for i in range(1, 255))
    assert average_path(256) == pytest.approx(2 * harmonic - 2 * 255 / 256, rel=2e-3)
    assert average_path(1) == 0 and average_path(2) == 1


def test_isolation_forest_isolates_outliers_like_scikit_learn_and_round_trips() -> None:
    from scipy.stats import spearmanr
    from sklearn.ensemble import IsolationForest as Reference

    x = blobs()
    outliers = np.random.default_rng(1).uniform(-8, 8, (20, x.shape[1])).astype(np.float32)
    forest = IsolationForest.fit(x, seed=3)
    scores = forest.score(torch.as_tensor(np.vstack([x, outliers]))).numpy()
    assert scores.min() > 0 and scores.max() <= 1
    assert np.median(scores[-20:]) > np.quantile(scores[:-20], 0.99)
    reference = -Reference(random_state=0).fit(x).score_samples(np.vstack([x, outliers]))
    assert spearmanr(scores, reference).statistic > 0.9  # the same algorithm
    t = torch.as_tensor(x)
    again = IsolationForest.from_dict(json.loads(json.dumps(forest.to_dict())))
    assert torch.equal(again.score(t), forest.score(t))
    assert torch.equal(IsolationForest.fit(x, seed=3).score(t), forest.score(t))


def test_isolation_forest_on_constant_and_tiny_data() -> None:
    constant = np.ones((50, 3), np.float32)
    forest = IsolationForest.fit(constant)  # nothing to split: every tree is one leaf
    s = forest.score(torch.as_tensor(constant)).numpy()
    assert np.allclose(s, s[0]) and np.isfinite(s).all()
    two = IsolationForest.fit(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
    assert np.isfinite(two.score(torch.zeros(3, 2)).numpy()).all()
    with pytest.raises(ValueError, match="non-empty 2-D"):
        IsolationForest.fit(np.zeros((0, 3), np.float32))


def test_neighbor_distance_passes_over_the_row_itself_once() -> None:
    """A bank code's distance is to its k nearest other codes (brute force), so the training
    rows score as new rows would; a copy of a bank code counts the copy once."""
    codes = blobs(200, 4)
    det = Detectors.fit(codes, codes, seed=0)
    assert len(det.bank) == 200 and det.k == 10
    got = det.neighbor_distance(torch.as_tensor(codes)).numpy()
    full = np.sqrt(((codes[:, None, :] - det.bank[None, :, :]) ** 2).sum(-1))
    expected = np.sort(full, axis=1)[:, 1:11].mean(axis=1)  # itself (0) passed over
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    new = codes[:5] + 0.5
    far = np.sort(np.sqrt(((new[:, None] - det.bank[None]) ** 2).sum(-1)), 1)[:, :10].mean(1)
    np.testing.assert_allclose(det.neighbor_distance(torch.as_tensor(new)).numpy(), far, rtol=1e-4)


def test_tail_score_is_ecods() -> None:
    """Per column -log of the smaller empirical tail probability (a value counted as one more
    training row), summed: brute force on few rows (exact), and the same ranking as PyOD's
    ECOD on many (where 256 quantiles stand for the column)."""
    from pyod.models.ecod import ECOD
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    small = rng.normal(size=(50, 3)).astype(np.float32)
    det = Detectors.fit(small[:, :2], small, seed=0)
    new = np.array([[0.0, 0.1, -0.2], [5.0, -5.0, 0.0]], np.float32)
    below = (small[None, :, :] <= new[:, None, :]).sum(1)
    above = (small[None, :, :] >= new[:, None, :]).sum(1)
    expected = -np.log((np.minimum(below, above) + 1) / 51).sum(1)
    got = det.tails(torch.as_tensor(new)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[1] > got[0]
    x = np.vstack([blobs(3000), rng.uniform(-6, 6, (60, 8)).astype(np.float32)])
    ours = Detectors.fit(x[:, :2], x, seed=0).tails(torch.as_tensor(x)).numpy()
    assert spearmanr(ours, ECOD().fit(x).decision_scores_).statistic > 0.98


def test_detectors_are_stored_without_pickle(tmp_path) -> None:
    x = blobs()
    det = Detectors.fit(x[:, :3], x, seed=0)
    det.save(tmp_path)
    assert np.load(tmp_path / CODES_FILE, allow_pickle=False).dtype == np.float32
    assert np.load(tmp_path / TAILS_FILE, allow_pickle=False).shape == (8, 256)
    json.loads((tmp_path / FOREST_FILE).read_text())
    loaded = Detectors.load(tmp_path)
    t = torch.as_tensor(x)
    assert torch.equal(loaded.isolation(t), det.isolation(t))
    assert torch.equal(loaded.tails(t), det.tails(t))
    assert torch.equal(loaded.neighbor_distance(t[:, :3]), det.neighbor_distance(t[:, :3]))
    np.save(tmp_path / CODES_FILE, np.array([{"a crafted": "object"}]), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):  # refused, never unpickled
        Detectors.load(tmp_path)
    (tmp_path / CODES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"score-codes\.npy is missing"):
        Detectors.load(tmp_path)


def test_estimator_default_score_is_the_ensemble_and_survives_save_load(tmp_path) -> None:
    """Standardized data (a linear head): ``auto`` is the ensemble; it flags planted outliers,
    the training scores equal scoring the rows again, and a saved estimator scores the same
    after loading; a saved model without its detector files says what is missing."""
    rng = np.random.default_rng(0)
    x = blobs(800, 10)
    x = (x - x.mean(0)) / x.std(0)
    est = AutoencoderReducer(epochs=15, random_state=0).fit(x)
    assert est.scorer_.kind == "ensemble" and est.trim_fraction == 0
    assert est.model_.config.widths == (10, 64, 32, 5)  # the estimator's narrower table net
    np.testing.assert_array_equal(est.decision_function(x), est.decision_scores_)
    outliers = rng.uniform(-6, 6, (30, 10)).astype(np.float32)
    assert np.median(est.decision_function(outliers)) > est.threshold_
    est.save(tmp_path / "m")
    assert {CODES_FILE, FOREST_FILE, TAILS_FILE} <= {p.name for p in (tmp_path / "m").iterdir()}
    loaded = AutoencoderReducer.load(tmp_path / "m")
    scores = est.decision_function(outliers)
    np.testing.assert_array_equal(loaded.decision_function(outliers), scores)
    (tmp_path / "m" / FOREST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"score-isolation\.json is missing"):
        AutoencoderReducer.load(tmp_path / "m")
