"""AutoencoderReducer behaves like a scikit-learn transformer and a PyOD detector."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ae_models import AutoencoderReducer


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
    scores = fitted.decision_function(x)  # BCE: the data lie in [0, 1]
    assert fitted.scorer_.kind == "bce" and scores.shape == (len(x),) and (scores >= 0).all()
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
    with pytest.raises(ValueError, match="X has 3 features, but the model was fitted on 64"):
        fitted.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"must be 2-D .* shape \(64,\)"):
        fitted.transform(np.zeros(64))
    bad = np.zeros((3, 64))
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite values \(first at row 1, column 5\)"):
        fitted.decision_function(bad)
    with pytest.raises(ValueError, match="Z has 3 features"):
        fitted.inverse_transform(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="loss='bce' needs X in \\[0, 1\\]"):
        AutoencoderReducer(loss="bce", epochs=1).fit(np.full((10, 4), 2.0))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        AutoencoderReducer(model="nope").fit(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
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
        "estimator.json",
        "model.json",
        "weights.pt",
    ]
    again = AutoencoderReducer.load(tmp_path / "m")
    assert np.array_equal(again.transform(x[:20]), fitted.transform(x[:20]))
    assert again.threshold_ == fitted.threshold_
    assert np.array_equal(again.predict(x[:20]), fitted.predict(x[:20]))
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
    for kind in ("mse", "scaled_mse", "hybrid"):
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
    assert AutoencoderReducer(epochs=2).fit(z).scorer_.kind == "hybrid"  # auto, linear head
    vae = AutoencoderReducer(model="vae", code_size=4, epochs=5, anomaly_score="elbo").fit(x)
    assert vae.scorer_.kind == "elbo" and (vae.decision_function(x) > 0).all()
    with pytest.raises(ValueError, match="score 'elbo' needs model 'vae'"):
        AutoencoderReducer(epochs=1, anomaly_score="elbo").fit(x)
    with pytest.raises(ValueError, match="contamination must be in"):
        AutoencoderReducer(contamination="sometimes").fit(x)
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\), got 0.5"):
        AutoencoderReducer(epochs=1, trim_fraction=0.5).fit(x)
    assert AutoencoderReducer().get_params()["trim_fraction"] == 0.1


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
    for method in ("transform", "decision_function", "predict", "score"):
        with pytest.raises(ValueError, match=r"another order than in fit \(position 0: 'px63'"):
            getattr(est, method)(shuffled)
    with pytest.raises(ValueError, match=r"missing \['px0'\]; not seen in fit \['other'\]"):
        est.transform(frame.rename(columns={"px0": "other"}))
    with pytest.warns(UserWarning, match="fitted with feature names"):
        by_position = est.transform(x)  # an array: its columns taken in the fitted order
    np.testing.assert_array_equal(est.transform(frame), by_position)
    back = AutoencoderReducer.load(est.save(tmp_path / "est"))
    with pytest.raises(ValueError, match="another order"):
        back.transform(shuffled)
    np.testing.assert_array_equal(back.transform(frame[est.feature_names_in_]), by_position)
