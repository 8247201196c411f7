"""AutoencoderReducer behaves like a scikit-learn transformer and a PyOD detector."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from ae_models import AutoencoderReducer

# the checks of scikit-learn's check_estimator that AutoencoderReducer does not pass, and why
EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": (
        "a float32 network scores a row slightly differently alone than in a batch (other "
        "matmul kernels, about 1e-7); predict_proba's min-max scaling by the narrow range "
        "of a 3-epoch model's training scores magnifies that past the check's 1e-7"
    ),
}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32) / 16.0, data.target


@pytest.fixture(scope="module")
def fitted(digits) -> AutoencoderReducer:
    x, _ = digits
    return AutoencoderReducer(code_size=8, epochs=30, batch_size=64, contamination=0.05).fit(x)


def test_fit_learns_and_sets_attributes(fitted, digits) -> None:
    x, _ = digits
    assert fitted.loss_ == "bce" and fitted.n_features_in_ == 64
    assert fitted.transform(x).shape == (len(x), 8)
    assert fitted.inverse_transform(fitted.transform(x[:5])).shape == (5, 64)
    scores = fitted.decision_function(x)  # cross-entropy less entropy: the data lie in [0, 1]
    assert fitted.scorer_.kind == "kl" and scores.shape == (len(x),) and (scores >= 0).all()
    mse = AutoencoderReducer(code_size=8, epochs=30, batch_size=64, anomaly_score="mse").fit(x)
    baseline = float(((x - x.mean(axis=0)) ** 2).mean())
    assert mse.decision_function(x).mean() < 0.5 * baseline
    assert abs(fitted.labels_.mean() - 0.05) < 0.01
    assert set(np.unique(fitted.predict(x))) <= {0, 1}
    assert fitted.score(x) < 0 and len(fitted.history_) >= 1


def test_anomalies_score_higher(fitted, digits) -> None:
    x, _ = digits
    rng = np.random.default_rng(0)
    noise = rng.random((50, 64)).astype(np.float32)
    assert np.median(fitted.decision_function(noise)) > np.quantile(
        fitted.decision_function(x), 0.99
    )
    assert fitted.predict(noise).mean() > 0.9


def test_not_fitted_and_bad_input_messages(fitted) -> None:
    with pytest.raises(NotFittedError, match="not fitted yet"):
        AutoencoderReducer().transform(np.zeros((2, 3)))
    with pytest.raises(
        ValueError, match="X has 3 features, but AutoencoderReducer is expecting 64"
    ):
        fitted.transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        AutoencoderReducer().predict_proba(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="method must be 'linear' or 'unify'"):
        fitted.predict_proba(np.zeros((2, 64)), method="softmax")
    with pytest.raises(ValueError, match=r"(?s)Expected 2D array, got 1D array.*reshape\(1, -1\)"):
        fitted.transform(np.zeros(64))
    bad = np.zeros((3, 64))
    bad[1, 5] = np.nan
    where = r"Input X contains NaN\. X holds 1 NaN or infinite values \(first at row 1, column 5\)"
    with pytest.raises(ValueError, match=where):
        fitted.decision_function(bad)
    with pytest.raises(TypeError, match=r"dense data is required\. Use '\.toarray\(\)'"):
        fitted.transform(csr_matrix(np.zeros((2, 64))))
    with pytest.raises(ValueError, match="Z has 3 features"):
        fitted.inverse_transform(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="loss='bce' needs X in \\[0, 1\\]"):
        AutoencoderReducer(loss="bce", epochs=1).fit(np.full((10, 4), 2.0))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        AutoencoderReducer(model="nope").fit(np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"(?s)1 sample.* a minimum of 2 is required"):
        AutoencoderReducer(code_size=1).fit(np.zeros((1, 4)))


def test_auto_loss_is_mse_outside_unit_range(digits) -> None:
    x, _ = digits
    z = StandardScaler().fit_transform(x)
    est = AutoencoderReducer(code_size=4, epochs=2).fit(z)
    assert est.loss_ == "mse" and est.model_.config.output == "linear"


def test_save_load_roundtrip(fitted, digits, tmp_path) -> None:
    x, _ = digits
    fitted.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "decision_scores.npy",
        "estimator.json",
        "model.json",
        "weights.pt",
    ]
    again = AutoencoderReducer.load(tmp_path / "m")
    assert np.array_equal(again.transform(x[:20]), fitted.transform(x[:20]))
    assert again.threshold_ == fitted.threshold_
    assert np.array_equal(again.predict(x[:20]), fitted.predict(x[:20]))
    assert np.array_equal(again.predict_proba(x[:20]), fitted.predict_proba(x[:20]))
    assert np.array_equal(again.labels_, fitted.labels_)
    (tmp_path / "m" / "decision_scores.npy").unlink()  # as saved by an older aepipe
    with pytest.raises(ValueError, match="saved without its training scores"):
        AutoencoderReducer.load(tmp_path / "m").predict_confidence(x[:20])
    with pytest.raises(FileNotFoundError, match="no saved AutoencoderReducer"):
        AutoencoderReducer.load(tmp_path)


def test_clone_and_pipeline_with_model_kwargs(digits) -> None:
    x, y = digits
    est = AutoencoderReducer(model="denoising", code_size=8, epochs=60, noise_level=0.2)
    copy = clone(est)
    assert copy.get_params()["noise_level"] == 0.2 and copy.model == "denoising"
    pipe = make_pipeline(copy, StandardScaler(), LogisticRegression(max_iter=1000))
    pipe.fit(x[:1400], y[:1400])
    assert pipe.score(x[1400:], y[1400:]) > 0.8
    assert "noise_level=0.2" in repr(est)


def test_same_random_state_same_codes(digits) -> None:
    x, _ = digits
    a = AutoencoderReducer(code_size=4, epochs=2, random_state=3).fit(x)
    b = AutoencoderReducer(code_size=4, epochs=2, random_state=3).fit(x)
    assert np.array_equal(a.transform(x), b.transform(x))


def test_vae_sampling(digits) -> None:
    x, _ = digits
    est = AutoencoderReducer(model="vae", code_size=4, epochs=2).fit(x)
    samples = est.sample(7)
    assert samples.shape == (7, 64) and np.isfinite(samples).all()
    with pytest.raises(ValueError, match="cannot sample"):
        AutoencoderReducer(code_size=4, epochs=1).fit(x).sample(2)


def test_verbose_progress(digits, capsys) -> None:
    x, _ = digits
    AutoencoderReducer(code_size=4, epochs=3, verbose=True).fit(x)
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "train" in err


def test_default_code_size_fits_narrow_tables() -> None:
    # regression: the default code of 16 refused a 6-column table (ADBench's thyroid)
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    est = AutoencoderReducer(epochs=2).fit(x)
    assert est.transform(x).shape == (200, 3)
    wide = np.random.default_rng(0).random((100, 64)).astype(np.float32)
    assert AutoencoderReducer(epochs=1).fit(wide).transform(wide).shape == (100, 16)


def test_score_kinds_calibration_and_auto_contamination(digits) -> None:
    x, _ = digits
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-3)  # standardized: linear head, MSE
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 3, (40, 64)).astype(np.float32)
    for kind in ("mse", "scaled_mse", "hybrid", "ensemble"):
        est = AutoencoderReducer(  # clean training data: no robust trimming needed
            code_size=8, epochs=20, anomaly_score=kind, contamination="auto", trim_fraction=0
        ).fit(z)
        train_scores = est.decision_function(z)
        assert est.scorer_.kind == kind and np.isfinite(train_scores).all()
        assert np.median(est.decision_function(noise)) > np.quantile(train_scores, 0.99)
        # auto threshold: a robust rule, flagging few clean rows and most noise rows
        assert est.labels_.mean() < 0.05 and est.predict(noise).mean() > 0.9
        p = est.calibrated_score(z)
        assert p.min() >= 0 and p.max() <= 1
        assert abs(float(np.median(p)) - 0.5) < 0.02  # training rows: uniform shares
        assert np.median(est.calibrated_score(noise)) > 0.98
    assert AutoencoderReducer(epochs=2).fit(z).scorer_.kind == "ensemble"  # auto, linear head
    vae = AutoencoderReducer(model="vae", code_size=4, epochs=5, anomaly_score="elbo").fit(x)
    assert vae.scorer_.kind == "elbo" and (vae.decision_function(x) > 0).all()
    with pytest.raises(ValueError, match="score 'elbo' needs model 'vae'"):
        AutoencoderReducer(epochs=1, anomaly_score="elbo").fit(x)
    with pytest.raises(ValueError, match="contamination must be in"):
        AutoencoderReducer(contamination="sometimes").fit(x)
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\), got 0.5"):
        AutoencoderReducer(epochs=1, trim_fraction=0.5).fit(x)
    # the pipeline's default too (issue 26): both front doors train on every row
    assert AutoencoderReducer().get_params()["trim_fraction"] == 0.0


def test_frame_columns_checked_by_name(digits, tmp_path) -> None:
    """Issue 17.7: fitted on a DataFrame, the estimator refuses the same columns in another
    order (its codes would be garbage) and columns it never saw, and keeps the names when
    saved; the same frame in the fitted order gives the fitted codes."""
    import pandas as pd

    x = digits[0][:300]
    frame = pd.DataFrame(x, columns=[f"px{i}" for i in range(x.shape[1])])
    est = AutoencoderReducer(epochs=2, code_size=4).fit(frame)
    assert list(est.feature_names_in_) == list(frame.columns)
    shuffled = frame[list(reversed(frame.columns))]
    order = "Feature names must be in the same order as they were in fit"
    for method in ("transform", "decision_function", "predict", "score"):
        with pytest.raises(ValueError, match=order):
            getattr(est, method)(shuffled)
    differ = r"(?s)unseen at fit time:\n- other.*seen at fit time, yet now missing:\n- px0"
    with pytest.raises(ValueError, match=differ):
        est.transform(frame.rename(columns={"px0": "other"}))
    with pytest.warns(UserWarning, match="fitted with feature names"):
        by_position = est.transform(x)  # an array: its columns taken in the fitted order
    np.testing.assert_array_equal(est.transform(frame), by_position)
    back = AutoencoderReducer.load(est.save(tmp_path / "est"))
    with pytest.raises(ValueError, match="same order as they were in fit"):
        back.transform(shuffled)
    np.testing.assert_array_equal(back.transform(frame[est.feature_names_in_]), by_position)


# check_estimator's checks fit on tiny random data many times: a small, fast configuration
QUICK = {"epochs": 3, "patience": 0, "device": "cpu", "precision": "fp32"}


@parametrize_with_checks(
    [AutoencoderReducer(**QUICK)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_conformance(estimator, check) -> None:
    check(estimator)


def test_set_output_names_the_codes(digits) -> None:
    import pandas as pd

    x, _ = digits
    frame = pd.DataFrame(x[:200], columns=[f"px{i}" for i in range(64)], index=range(5, 205))
    est = AutoencoderReducer(code_size=4, **QUICK).set_output(transform="pandas")
    codes = est.fit_transform(frame)
    assert isinstance(codes, pd.DataFrame) and list(codes.columns) == ["z_0", "z_1", "z_2", "z_3"]
    assert list(codes.index) == list(frame.index)
    assert list(est.get_feature_names_out()) == ["z_0", "z_1", "z_2", "z_3"]
    assert "code_size=4" in repr(est) and "AutoencoderReducer" in est._repr_html_()


def test_predict_proba_and_confidence_as_pyod_computes_them(fitted, digits) -> None:
    """The same formulas as PyOD's BaseDetector, checked against PyOD itself when it is
    installed (the bench extra); always: shapes, ranges and the order of the scores."""
    x, _ = digits
    rng = np.random.default_rng(1)
    rows = np.vstack([x[:100], rng.random((20, 64)).astype(np.float32)])
    scores = fitted.decision_function(rows)
    for method in ("linear", "unify"):
        probs = fitted.predict_proba(rows, method=method)
        assert probs.shape == (120, 2) and np.allclose(probs.sum(axis=1), 1.0)
        assert ((probs >= 0) & (probs <= 1)).all()
        order = np.argsort(scores)
        assert (np.diff(probs[order, 1]) >= -1e-12).all()  # more anomalous, more likely
    probs, confidence = fitted.predict_proba(rows, return_confidence=True)
    assert confidence.shape == (120,) and ((confidence >= 0) & (confidence <= 1)).all()
    assert confidence[100:].mean() > 0.9  # noise: surely anomalous

    base = pytest.importorskip("pyod.models.base")

    class Scores(base.BaseDetector):  # PyOD's own arithmetic on our scores
        def __init__(self, contamination=0.1):
            super().__init__(contamination=contamination)

        def fit(self, X, y=None):
            self.decision_scores_ = fitted.decision_scores_.astype(np.float64)
            self.threshold_ = fitted.threshold_
            self.labels_ = fitted.labels_
            self._mu = np.mean(self.decision_scores_)
            self._sigma = np.std(self.decision_scores_)
            self._classes = 2
            return self

        def decision_function(self, X):
            return fitted.decision_function(X).astype(np.float64)

    pyod = Scores(contamination=fitted.contamination).fit(rows)
    for method in ("linear", "unify"):
        np.testing.assert_allclose(
            fitted.predict_proba(rows, method=method), pyod.predict_proba(rows, method=method)
        )
    np.testing.assert_allclose(fitted.predict_confidence(rows), pyod.predict_confidence(rows))
