"""``AutoencoderReducer``: the autoencoders behind a scikit-learn / PyOD style estimator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from ae_models.runtime import select_device
from ae_models.scoring.scorer import SCORE_KINDS, Scorer, score_rows
from ae_models.training.callbacks import ProgressBar
from ae_models.training.config import auto_code_size
from ae_models.training.fitting import ESTIMATOR_LR, ESTIMATOR_TABLE_HIDDEN, fit_autoencoder
from ae_models.training.large_input import LargeInput, large_source, scan_rows
from ae_models.training.loop import TrainConfig, TrainResult, encode_and_score
from ae_models.training.streaming import available_memory, rows_of, source_bytes
from ae_models.variants.base import Autoencoder
from ae_models.variants.deep import TABLE_HIDDEN, DeepConfig
from ae_models.variants.registry import create_model, get_model_class
from ae_models.variants.serialization import load_model, save_model
from ae_models.vocabulary import latent_columns

ESTIMATOR_FILE = "estimator.json"
SCORES_FILE = "decision_scores.npy"  # the training scores (predict_proba, predict_confidence)
_PARAMS = (
    "model",
    "code_size",
    "loss",
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "validation_fraction",
    "patience",
    "trim_fraction",
    "contamination",
    "anomaly_score",
    "device",
    "precision",
    "random_state",
    "verbose",
    "checkpoint_dir",
    "streaming",
    "memory_budget_gb",
)


def _located(err: ValueError, x: Any, what: str) -> ValueError:
    """scikit-learn's NaN/infinity error for ``x`` with where the first such value is."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return err
    bad = ~np.isfinite(arr)
    if arr.ndim != 2 or not bad.any():
        return err
    row, col = (int(i) for i in np.argwhere(bad)[0])
    first = str(err).split("\n", 1)[0]
    return ValueError(
        f"{first} {what} holds {int(bad.sum())} NaN or infinite values (first at row {row}, "
        f"column {col})"
    )


def validate_input(est: Any, x: Any, *, reset: bool, min_rows: int = 1) -> np.ndarray:
    """``x`` as a 2-D float32 array through scikit-learn's own checks (``validate_data``:
    shape, width and feature names against ``fit``, sparse, complex and non-finite values);
    a non-finite value's error also says where the first one is."""
    try:
        return validate_data(
            est,
            x,
            reset=reset,
            dtype=np.float32,
            ensure_min_samples=min_rows,
            ensure_min_features=2 if reset else 1,
        )
    except ValueError as err:
        if "NaN" in str(err) or "infinity" in str(err):
            raise _located(err, x, "X") from None
        raise


class AutoencoderReducer(TransformerMixin, BaseEstimator):
    """Learned dimensionality reduction and reconstruction-based anomaly scores.

    ``fit(X)`` trains the named variant; ``transform`` gives latent codes,
    ``inverse_transform`` decodes them, ``decision_function`` gives per-row anomaly
    scores of the ``anomaly_score`` kind (higher = more anomalous; ``auto``: ``kl`` for
    [0, 1] data, else ``ensemble``, see :mod:`ae_models.scoring.scorer`), ``calibrated_score`` maps
    them to
    [0, 1] by the training scores, ``predict`` flags rows above ``threshold_`` (the
    ``1 - contamination`` quantile of the training scores, or with ``contamination="auto"`` a
    robust rule on them).
    ``loss="auto"`` picks a sigmoid head with binary cross-entropy when X lies in [0, 1], a
    linear head with MSE otherwise.
    Defaults differ from the pipeline's in two places, each for a stated reason
    (:mod:`ae_models.training.fitting`): the learning rate, and narrower hidden layers for tables.
    ``anomaly_score="auto"`` is ``ensemble`` for data outside [0, 1]: the scaled
    reconstruction error, the code's distance to its nearest training codes, an isolation
    forest's score and ECOD's tail score on the inputs, each as a robust z-score over the
    training rows, floored so that no part can veto the others, averaged
    (:mod:`ae_models.scoring.scorer`); for [0, 1] data it is ``kl``, the cross-entropy less the
    targets' own entropy (standardize a table to get ``ensemble``); ``trim_fraction``
    (default 0) > 0 leaves each batch's worst-reconstructed share out of the loss after a
    few warm-up epochs (see :class:`ae_models.training.loop.TrainConfig`).
    ``batch_size="auto"`` gives small data sets enough steps an epoch
    (:func:`~ae_models.training.config.auto_batch_size`);
    ``code_size="auto"`` is 16, or half the input width when that is narrower
    (:func:`~ae_models.training.config.auto_code_size`).
    Fitted on a DataFrame, it keeps the column names in ``feature_names_in_`` and refuses a
    frame whose columns differ or come in another order (scikit-learn's convention).
    Extra keyword arguments go to the variant's config (e.g. ``noise_level`` for denoising).

    Data larger than memory: ``fit`` takes a memory-mapped array (``np.memmap``,
    ``np.load(path, mmap_mode="r")``) or the path of a Parquet file of numeric columns, and
    streams it in blocks (:mod:`ae_models.training.streaming`) when its float32 rows exceed
    ``memory_budget_gb`` (default a quarter of the memory available) or ``streaming`` is
    ``"always"``; the validation rows are then a seeded random share, the scorer is fitted on
    a uniform sample of at most 100,000 training rows, and ``decision_scores_`` come from one
    more pass over every row in order.

    A scikit-learn transformer (``clone``, ``Pipeline``, ``set_output(transform="pandas")``
    with columns ``z_0``, ``z_1``, ...; ``check_estimator`` passes, see the tests for the
    checks left out and why) and a PyOD-style detector (``decision_scores_``, ``labels_``,
    ``threshold_``, ``predict_proba``, ``predict_confidence``; labels are PyOD's 1 for an
    anomaly, 0 otherwise, not scikit-learn's outlier convention of -1 and 1).
    """

    def __init__(
        self,
        model: str = "deep",
        code_size: int | Literal["auto"] = "auto",
        loss: Literal["auto", "bce", "mse"] = "auto",
        epochs: int = 100,
        batch_size: int | Literal["auto"] = "auto",
        lr: float = ESTIMATOR_LR,
        lr_schedule: str = "onecycle",
        validation_fraction: float = 0.1,
        patience: int = 15,
        trim_fraction: float = 0.0,
        contamination: float | Literal["auto"] = 0.01,
        anomaly_score: str = "auto",
        device: str = "auto",
        precision: str = "auto",
        random_state: int = 0,
        verbose: bool = False,
        checkpoint_dir: str | None = None,
        streaming: Literal["auto", "always", "never"] = "auto",
        memory_budget_gb: float | None = None,
        **model_kwargs: Any,
    ) -> None:
        self.model = model
        self.code_size = code_size
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.trim_fraction = trim_fraction
        self.contamination = contamination
        self.anomaly_score = anomaly_score
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.streaming = streaming
        self.memory_budget_gb = memory_budget_gb
        self._model_kwargs = dict(model_kwargs)

    # -- scikit-learn protocol -----------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters, model keyword arguments included (for ``clone``)."""
        return {**{p: getattr(self, p) for p in _PARAMS}, **self._model_kwargs}

    def set_params(self, **params: Any) -> AutoencoderReducer:
        """Set constructor parameters; unknown names go to the model keyword arguments."""
        for key, value in params.items():
            if key in _PARAMS:
                setattr(self, key, value)
            else:
                self._model_kwargs[key] = value
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # codes are float32 whatever X is
        return tags

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The codes' column names: ``z_0`` ... ``z_<code_size - 1>``, as in the feature
        tables (``set_output(transform="pandas")`` names the columns with them)."""
        self._check_fitted()
        return np.asarray(latent_columns(self.model_.config.code_size), dtype=object)

    def _check_fitted(self) -> None:
        check_is_fitted(self, "model_")

    def _check_params(self) -> None:
        get_model_class(self.model)  # names the available models when unknown
        if self.loss not in ("auto", "bce", "mse"):
            raise ValueError(f"loss must be 'auto', 'bce' or 'mse', got {self.loss!r}")
        c = self.contamination
        if c != "auto" and not (isinstance(c, int | float) and 0 < c < 0.5):
            raise ValueError(
                f"contamination must be in (0, 0.5) or 'auto', got {self.contamination!r}"
            )
        if self.anomaly_score not in SCORE_KINDS:
            raise ValueError(
                f"anomaly_score must be one of {list(SCORE_KINDS)}, got {self.anomaly_score!r}"
            )
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )

    # -- fitting -------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> AutoencoderReducer:
        """Train on ``X`` (rows x features; or a memory-mapped array or a Parquet path, which
        may stream); ``y`` is ignored. Returns self."""
        self._check_params()
        holdout = (self.validation_fraction, self.random_state)
        large = large_source(X, self._train_config(1), holdout)
        if large is not None:
            return self._fit_large(large)
        # at least 2 rows and 2 features: an autoencoder's code is narrower than its input
        x = validate_input(self, X, reset=True, min_rows=2)
        in_unit = bool(x.min() >= 0.0 and x.max() <= 1.0)
        if self.loss == "bce" and not in_unit:
            raise ValueError(
                f"loss='bce' needs X in [0, 1], but X spans [{x.min():g}, {x.max():g}]; "
                "scale it or use loss='mse'"
            )
        loss = self.loss if self.loss != "auto" else ("bce" if in_unit else "mse")
        net = self._network(x.shape[1], loss)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(len(x))
        n_val = round(len(x) * self.validation_fraction)
        n_val = n_val if len(x) - n_val >= 1 else 0
        fit_rows, val_rows = x[order[n_val:]], x[order[:n_val]]
        cfg = self._train_config(n_val)
        fit = fit_autoencoder(
            net,
            fit_rows,
            val_rows if n_val else None,
            cfg,
            score=self.anomaly_score,
            contamination=self.contamination,
            callbacks=[ProgressBar()] if self.verbose else [],
            score_on=x,  # every row, in X's order: decision_scores_ line up with X
        )
        names = getattr(self, "feature_names_in_", None)  # validate_data kept a frame's names
        return self._fitted(net, loss, x.shape[1], names, fit, fit.fitted.scores)

    def _train_config(self, n_val: int) -> TrainConfig:
        """The training settings of these parameters (no early stopping without
        validation rows)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size if self.batch_size == "auto" else int(self.batch_size),
            lr=self.lr,
            lr_schedule=self.lr_schedule,  # type: ignore[arg-type]
            patience=self.patience if n_val else 0,
            trim_fraction=self.trim_fraction,
            seed=self.random_state,
            device=self.device,
            precision=self.precision,  # type: ignore[arg-type]
            checkpoint_dir=self.checkpoint_dir,
            streaming=self.streaming,
            memory_budget_gb=self.memory_budget_gb,
        )

    def _fit_large(self, large: LargeInput) -> AutoencoderReducer:
        """``fit`` on a memory-mapped array or a Parquet file, streamed when it is too large
        for the memory budget: one pass checks the values, training streams, one more pass
        scores every row in order."""
        rows, lo, hi = scan_rows(large.source(None).reader())
        width = large.width
        if rows < 2 or width < 2:
            raise ValueError(f"X needs at least 2 rows and 2 features to fit, got {rows} x {width}")
        in_unit = lo >= 0.0 and hi <= 1.0
        if self.loss == "bce" and not in_unit:
            raise ValueError(
                f"loss='bce' needs X in [0, 1], but X spans [{lo:g}, {hi:g}]; "
                "scale it or use loss='mse'"
            )
        loss = self.loss if self.loss != "auto" else ("bce" if in_unit else "mse")
        net = self._network(width, loss)
        val = large.source(True) if self.validation_fraction > 0 else None
        n_val = rows_of(val.reader()) if val is not None else 0
        cfg = self._train_config(n_val)
        streaming = cfg.streams(source_bytes(rows, width), available_memory())
        fit = fit_autoencoder(
            net,
            large.source(False) if n_val else large.source(None),
            val if n_val else None,
            cfg,
            score=self.anomaly_score,
            contamination=self.contamination,
            callbacks=[ProgressBar()] if self.verbose else [],
            streaming=streaming,
        )
        every = large.source(None).open(streaming=True)  # in X's order, block by block
        scores = score_rows(net, every, fit.scorer, device=self.device).scores
        return self._fitted(net, loss, width, large.names, fit, scores)

    def _network(self, width: int, loss: str) -> Autoencoder:
        """A new network of this estimator's variant for ``width`` inputs (a table under
        :data:`~ae_models.variants.deep.TABLE_HIDDEN`'s first width gets the estimator's narrower
        hidden layers unless ``hidden`` is given; :mod:`ae_models.training.fitting` says why)."""
        kwargs = dict(self._model_kwargs)
        code_size = auto_code_size(width) if self.code_size == "auto" else self.code_size
        if (
            width < TABLE_HIDDEN[0]
            and issubclass(get_model_class(self.model).config_class, DeepConfig)
            and kwargs.get("hidden") is None
        ):
            kwargs["hidden"] = tuple(h for h in ESTIMATOR_TABLE_HIDDEN if h > code_size)
        return create_model(
            self.model,
            seed=self.random_state,
            input_dim=width,
            code_size=code_size,
            output="sigmoid" if loss == "bce" else "linear",
            **kwargs,
        )

    def _fitted(
        self,
        net: Autoencoder,
        loss: str,
        width: int,
        names: np.ndarray | None,
        fit: Any,
        scores: np.ndarray,
    ) -> AutoencoderReducer:
        """Set the fitted attributes from a finished fit; returns self."""
        self.model_: Autoencoder = net
        self.loss_ = loss
        self.n_features_in_ = width
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):  # refitted on an array
            del self.feature_names_in_
        self.history_ = fit.history
        self.train_result_: TrainResult = fit.result
        self.scorer_ = fit.scorer
        self.decision_scores_ = scores
        self.threshold_ = self.scorer_.threshold
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X, y).transform(X)

    # -- using a fitted model ------------------------------------------------------------

    def _input(self, X: Any) -> np.ndarray:
        """``X`` checked against what ``fit`` saw: fitted, the same width, the same column
        names in the same order (for frames)."""
        self._check_fitted()
        return validate_input(self, X, reset=False)

    def transform(self, X: Any) -> np.ndarray:
        """Latent codes of ``X`` (rows x code_size, float32)."""
        x = self._input(X)  # first: an unfitted estimator says so
        codes, _, _ = encode_and_score(self.model_, x, device=self.device)
        return codes

    @torch.no_grad()
    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Reconstructions decoded from latent codes ``Z``."""
        self._check_fitted()
        z = check_array(Z, dtype=np.float32, input_name="Z")
        if z.shape[1] != self.model_.config.code_size:
            raise ValueError(
                f"Z has {z.shape[1]} features, but AutoencoderReducer's codes have "
                f"{self.model_.config.code_size}"
            )
        dev = select_device(self.device)
        self.model_.to(dev).eval()
        return self.model_.decode(torch.from_numpy(z).to(dev)).float().cpu().numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """Per-row anomaly score of the fitted kind (``scorer_.kind``): higher is more
        anomalous."""
        x = self._input(X)
        return score_rows(self.model_, x, self.scorer_, device=self.device).scores

    def calibrated_score(self, X: Any) -> np.ndarray:
        """Scores mapped to [0, 1]: the share of training rows that scored at or below each
        row ("more unusual than p of the training data")."""
        return self.scorer_.calibration.calibrate(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """1 for rows whose score exceeds ``threshold_`` (anomalies), else 0."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def _training_scores(self) -> np.ndarray:
        if not hasattr(self, "decision_scores_"):
            raise ValueError(
                "this AutoencoderReducer was saved without its training scores (before "
                "aepipe kept them); fit it again for predict_proba and predict_confidence"
            )
        return np.asarray(self.decision_scores_, np.float64)

    def predict_proba(
        self,
        X: Any,
        method: Literal["linear", "unify"] = "linear",
        return_confidence: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """[P(normal), P(anomaly)] per row (n x 2), as PyOD's detectors give them:
        ``linear`` scales the score by the training scores' range (min-max, clipped to
        [0, 1]); ``unify`` is Kriegel et al.'s Gaussian scaling (the erf of the score
        standardized by the training scores, clipped). With ``return_confidence`` also
        :meth:`predict_confidence`. :meth:`calibrated_score` is the better-founded
        probability-like score (the share of training rows scoring lower)."""
        from scipy.special import erf

        if method not in ("linear", "unify"):
            raise ValueError(f"method must be 'linear' or 'unify', got {method!r}")
        scores = self.decision_function(X).astype(np.float64)
        train = self._training_scores()
        if method == "linear":
            span = float(train.max() - train.min())
            anomaly = (scores - train.min()) / (span if span > 0 else 1.0)
        else:
            anomaly = erf((scores - train.mean()) / (train.std() * np.sqrt(2)))
        anomaly = np.clip(anomaly, 0.0, 1.0)
        probs = np.column_stack([1.0 - anomaly, anomaly])
        return (probs, self.predict_confidence(X)) if return_confidence else probs

    def predict_confidence(self, X: Any) -> np.ndarray:
        """How surely each row's label (:meth:`predict`) would stay the same if the model
        were fitted on another sample of the training data, in [0, 1] (Perini et al.'s
        ExCeeD, as PyOD computes it)."""
        from scipy.stats import binom

        scores = self.decision_function(X).astype(np.float64)
        train = np.sort(self._training_scores())
        n = len(train)
        below = np.searchsorted(train, scores, side="right")  # training scores <= each
        posterior = (1.0 + below) / (2.0 + n)
        c = self.contamination
        share = float(c) if c != "auto" else float(np.mean(self.labels_))
        confidence = 1.0 - binom.cdf(n - int(n * share), n, posterior)
        normal = scores <= self.threshold_
        confidence[normal] = 1.0 - confidence[normal]
        return confidence

    def score(self, X: Any, y: Any = None) -> float:
        """Negative mean reconstruction loss (BCE or MSE, as trained) on ``X``: higher is
        better."""
        x = self._input(X)
        _, mse, bce = encode_and_score(self.model_, x, device=self.device)
        return -float((bce if self.loss_ == "bce" else mse).mean())

    def sample(self, n: int) -> np.ndarray:
        """``n`` new rows drawn from a fitted ``vae``."""
        self._check_fitted()
        sampler = getattr(self.model_, "sample", None)
        if sampler is None:
            raise ValueError(f"model {self.model!r} cannot sample; use model='vae'")
        gen = torch.Generator().manual_seed(self.random_state)
        return sampler(n, generator=gen).float().cpu().numpy()

    # -- persistence ---------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write weights (state dict) and JSON configs to the folder ``path``; no pickle."""
        self._check_fitted()
        folder = save_model(self.model_, path)
        state = {
            "params": self.get_params(),
            "loss_": self.loss_,
            "n_features_in_": self.n_features_in_,
            "feature_names_in_": (
                list(self.feature_names_in_) if hasattr(self, "feature_names_in_") else None
            ),
            "threshold_": self.threshold_,
            "scorer_": self.scorer_.to_dict(),
            "history_": self.history_,
        }
        (folder / ESTIMATOR_FILE).write_text(json.dumps(state, indent=1))
        self.scorer_.save_files(folder)
        np.save(folder / SCORES_FILE, np.asarray(self.decision_scores_), allow_pickle=False)
        return folder

    @classmethod
    def load(cls, path: str | Path) -> AutoencoderReducer:
        """Rebuild an estimator written by :meth:`save` (weights load with weights_only)."""
        folder = Path(path)
        if not (folder / ESTIMATOR_FILE).is_file():
            raise FileNotFoundError(f"no saved AutoencoderReducer in {str(folder)!r}")
        state = json.loads((folder / ESTIMATOR_FILE).read_text())
        est = cls(**state["params"])
        est.model_, _ = load_model(folder)
        est.loss_ = state["loss_"]
        est.n_features_in_ = state["n_features_in_"]
        if state.get("feature_names_in_") is not None:
            est.feature_names_in_ = np.asarray(state["feature_names_in_"], dtype=object)
        est.threshold_ = state["threshold_"]
        est.scorer_ = Scorer.from_dict(state["scorer_"]).with_files(folder)
        est.history_ = state["history_"]
        scores = folder / SCORES_FILE
        if scores.is_file():  # saved before the training scores were kept: no predict_proba
            est.decision_scores_ = np.load(scores, allow_pickle=False)
            est.labels_ = (est.decision_scores_ > est.threshold_).astype(np.int64)
        return est
