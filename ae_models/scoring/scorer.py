"""Anomaly scores from reconstructions: the score kinds, the threshold rule, the calibration.

Score kinds (per row, higher = more unusual), chosen with ``score``:

- ``mse``: mean squared error over the input columns;
- ``scaled_mse``: mean of squared residuals each divided by its column's typical training
  residual (the median absolute residual, floored at a tenth of the median over columns), so
  a column the model always reconstructs loosely does not drown one it reconstructs well;
  on the ADBench sets this ranks anomalies better than plain MSE (benchmarks/adbench.py);
- ``bce``: mean binary cross-entropy, for [0, 1] data and a sigmoid head;
- ``kl``: for a sigmoid head, each value's binary cross-entropy minus the entropy of the
  value itself (the KL divergence of the reconstruction from the target, zero at a perfect
  reconstruction), plus the squared distance by which the value lies outside [0, 1]. For 0/1
  targets it equals ``bce``; for continuous targets (min-max scaled columns, gray pixels)
  ``bce`` is not: it carries the target's own entropy, largest at 0.5 and zero at 0 and 1,
  so rows whose values sit at the ends of their ranges (the anomalies of a table) score as
  the most normal. Measured on ADBench's thyroid (one split, min-max): AUROC ``bce`` 0.081,
  ``kl`` 0.936;
- ``elbo``: the VAE's negative ELBO as trained (mean reconstruction loss + weighted KL);
- ``hybrid``: ``scaled_mse`` plus how far the row's code lies from the training codes (the
  Mahalanobis distance in the latent space), each as robust z-scores of its log (median and
  MAD over the training rows) and summed: rows the model reconstructs well but maps to an
  unusual code count too;
- ``ensemble``: four detectors of different kinds, each as a robust z-score over the
  training rows (median and MAD; of the log for the first two), floored at
  ``-ENSEMBLE_FLOOR`` and averaged: the
  ``scaled_mse`` reconstruction error (rows that break the columns' learned relations), the
  mean distance of the row's code to its 10 nearest training codes (rows in sparse regions
  of the code space; a sample of at most 4,096 training codes is kept), an isolation
  forest's score on the inputs (rows a few random axis-aligned cuts isolate;
  :mod:`ae_models.scoring.isolation`) and ECOD's tail score (values in the far tails of their
  training columns; :mod:`ae_models.scoring.detectors`). No one kind of detector wins on every data
  set (ADBench's finding; on its 27 sets each part is the worst of them somewhere), and
  averaging detectors whose errors differ keeps a set where one fails from failing the
  score. The floor is what keeps one part from vetoing the others: a part only sees its own
  kind of anomaly, so "typical to me" is weak evidence, while "far out to me" is strong; a
  part can lower a row's mean by at most ``ENSEMBLE_FLOOR / 4`` robust deviations and raise
  it without bound (a repeated anomaly whose code sits at distance 0 in the neighbour bank
  scored a z of -20 before, outweighing three parts' +16). The neighbour bank holds each
  distinct code once, so copies of a row are no evidence that it is normal;
- ``auto``: ``ensemble`` for tables (the pipeline says so: every non-pixel source) and for
  data outside [0, 1]; ``bce`` for images (pixels, whose targets sit mostly at 0 and 1, and
  where ``kl``'s entropy costs about 4x ``bce``'s per-value work in scoring); ``kl`` for a
  sigmoid head on [0, 1] data of unknown kind (the estimator's: a min-max table or pixels).

Per-column errors give per-source-column contributions (``top_columns``): the terms the row
score averages, or for a scaled score of a sigmoid head (a min-max table's ``ensemble``) the
head's own divergence, ``kl``, each relative to its training mean.

A :class:`ScoreCalibration` is fitted on the training rows' scores and stored with the model
(``model.json``), so scoring applies exactly what training decided:

- ``threshold``: rows scoring above it are flagged. With ``contamination`` a fraction, it is
  the ``1 - contamination`` quantile of the training scores. With ``"auto"`` (the anomaly rate
  is unknown) it is a robust rule on the log scores, which are far closer to normal than the
  right-skewed scores themselves: ``exp(median + k * 1.4826 * MAD)`` of ``log(score)``, with
  ``k = 3.5`` (:data:`AUTO_K`): a row is flagged when its log score is more than 3.5 robust
  standard deviations above the typical one (``hybrid`` and ``ensemble`` scores, sums of
  z-scores already, take the rule as they are). Outliers in the training data barely move the
  median and the MAD, so the rule holds on contaminated training data.
- ``quantiles``: the training scores at evenly spaced probabilities; :meth:`calibrate` maps a
  score to the share of training rows scoring at or below it ("more unusual than p of the
  training data"), piecewise linear between the stored quantiles.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ae_models.scoring.detectors import Detectors
from ae_models.training.loop import forward_batches
from ae_models.training.streaming import is_rows
from ae_models.variants.base import reconstruction_error

ScoreKind = Literal["mse", "scaled_mse", "bce", "kl", "elbo", "hybrid", "ensemble"]
SCORE_KINDS = ("auto", "mse", "scaled_mse", "bce", "kl", "elbo", "hybrid", "ensemble")
SCALED = ("scaled_mse", "hybrid", "ensemble")  # kinds whose column errors are scaled
# what the rows are, for ``auto``: a table's, an image's pixels, or not known (the estimator)
DataKind = Literal["table", "pixels", "unknown"]

AUTO_K = 3.5  # robust standard deviations above the median log score for "auto"
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
N_QUANTILES = 1001  # stored training-score quantiles: a resolution of 0.1 %
# an ensemble part's robust z-score counts at most this far below its training median:
# chosen on half A of the ADBench sets (benchmarks/adbench.py; docs/models.md)
ENSEMBLE_FLOOR = 0.5


def auto_threshold(scores: np.ndarray, k: float = AUTO_K) -> float:
    """The "auto" threshold: ``exp(median + k * 1.4826 * MAD)`` of the log scores, or
    ``median + k * 1.4826 * MAD`` of the scores themselves when some are not positive (the
    ``hybrid`` score is a sum of z-scores of logs already)."""
    s = np.asarray(scores, np.float64)
    positive = bool((s > 0).all())
    center, spread = median_spread(np.log(s) if positive else s)
    cut = center + k * spread
    return float(np.exp(cut)) if positive else cut


def median_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 MAD) of ``values``."""
    center = float(np.median(values))
    return center, MAD_TO_SIGMA * float(np.median(np.abs(values - center)))


@dataclass(frozen=True)
class ScoreCalibration:
    """Threshold and training-score quantiles of one model, fitted on its training scores."""

    threshold: float
    rule: str
    quantiles: tuple[float, ...]

    @classmethod
    def fit(cls, scores: np.ndarray, contamination: float | Literal["auto"]) -> ScoreCalibration:
        """Fit on the training rows' scores with a contamination fraction or ``"auto"``."""
        s = np.asarray(scores, np.float64)
        if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all():
            raise ValueError("calibration needs a non-empty 1-D array of finite scores")
        if contamination == "auto":
            threshold, rule = auto_threshold(s), f"auto: median + {AUTO_K} MAD of log scores"
        else:
            if not 0 < float(contamination) < 0.5:
                raise ValueError(
                    f"contamination must be in (0, 0.5) or 'auto', got {contamination!r}"
                )
            threshold = float(np.quantile(s, 1.0 - float(contamination)))
            rule = f"contamination {float(contamination):g}"
        q = np.quantile(s, np.linspace(0.0, 1.0, min(N_QUANTILES, max(2, len(s)))))
        return cls(threshold, rule, tuple(float(v) for v in q))

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Each score as the share of training scores at or below it, in [0, 1] (float32)."""
        if not self.quantiles:
            raise ValueError("this model was saved without calibration quantiles")
        q = np.asarray(self.quantiles, np.float64)
        p = np.linspace(0.0, 1.0, len(q))
        # equal quantiles (ties) would make interp pick one side; take the highest share
        q_unique, last = np.unique(q[::-1], return_index=True)
        p_unique = p[::-1][last]
        return np.interp(np.asarray(scores, np.float64), q_unique, p_unique).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in ``model.json``."""
        return {"threshold": self.threshold, "rule": self.rule, "quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreCalibration:
        """Rebuild from :meth:`to_dict`'s form."""
        return cls(float(data["threshold"]), str(data["rule"]), tuple(data["quantiles"]))


def resolve_score(kind: str, output: str, model_name: str, data: DataKind = "unknown") -> ScoreKind:
    """The score kind ``auto`` stands for, checked against the model (``elbo`` needs a VAE,
    ``bce`` and ``kl`` a sigmoid head): ``ensemble`` for a ``table`` or a linear head; for a
    sigmoid head ``bce`` on ``pixels`` and ``kl`` on [0, 1] data of unknown kind."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"score must be one of {list(SCORE_KINDS)}, got {kind!r}")
    if kind == "auto":
        if output != "sigmoid" or data == "table":
            return "ensemble"
        return "bce" if data == "pixels" else "kl"
    if kind == "elbo" and model_name != "vae":
        raise ValueError(f"score 'elbo' needs model 'vae', not {model_name!r}")
    if kind in ("bce", "kl") and output != "sigmoid":
        raise ValueError(f"score {kind!r} needs data in [0, 1] and a sigmoid head; use 'mse'")
    return kind  # type: ignore[return-value]


def column_errors(
    x: Tensor, out: Any, kind: ScoreKind, feature_scale: Tensor | None = None
) -> Tensor:
    """Per-row, per-column error terms of ``kind`` (rows x columns, fp32); the row score is
    their mean (plus the VAE's penalty for ``elbo``)."""
    x = x.float().flatten(1)
    if kind in ("bce", "kl") or (kind == "elbo" and out.logits is not None):
        target = x.clamp(0, 1)
        if out.logits is not None:
            logits = out.logits.float().flatten(1)
            errors = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:
            recon = out.recon.float().flatten(1).clamp(1e-7, 1 - 1e-7)
            errors = F.binary_cross_entropy(recon, target, reduction="none")
        if kind == "kl":  # less the target's own entropy, plus what lies outside [0, 1]
            errors = (errors - target_entropy(target)).clamp_min_(0) + (x - target).square()
        return errors
    residual = out.recon.float().flatten(1) - x
    if kind in SCALED:
        if feature_scale is None:
            raise ValueError("scaled_mse needs the columns' training residual scale")
        residual = residual / feature_scale
    return residual.square()


def unit_targets(x: Tensor) -> Tensor:
    """``x`` as float32 rows clamped to [0, 1] (the targets of cross-entropy), without the
    copy when they already are (pixels: one pass that reads, instead of one that writes)."""
    x = x.float().flatten(1)
    if x.numel():
        low, high = torch.aminmax(x)
        if low < 0 or high > 1:
            return x.clamp(0, 1)
    return x


def target_entropy(target: Tensor) -> Tensor:
    """Each value's binary entropy ``-t log t - (1 - t) log(1 - t)`` (0 at 0 and 1): the
    cross-entropy of a perfect reconstruction of a target ``t`` in [0, 1]."""
    return -(torch.special.xlogy(target, target) + torch.special.xlogy(1 - target, 1 - target))


def kl_row_means(x: Tensor, logits: Tensor) -> Tensor:
    """Each row's mean ``kl`` error (:func:`column_errors`) from logits: the row's mean
    cross-entropy (:func:`bce_row_means`, without the matrix) less its values' mean entropy,
    plus their mean squared distance outside [0, 1]. Equal to the matrix's row means within
    float32 rounding (a row's terms are each at least 0 but for rounding)."""
    x = x.float().flatten(1)
    target = unit_targets(x)
    entropy = target_entropy(target).mean(dim=1)
    outside = (x - target).square().mean(dim=1) if target is not x else 0.0
    return (_bce_of_targets(target, logits) - entropy).clamp_min(0) + outside


def bce_row_means(x: Tensor, logits: Tensor) -> Tensor:
    """Each row's mean binary cross-entropy from logits, without the rows x columns matrix:
    ``softplus(l) - x * l`` summed (the identity ``-x log s(l) - (1 - x) log(1 - s(l))``),
    the second sum one batched dot product. 2x faster than the matrix on MNIST rows; equal
    to its row means within float32 rounding (about 1e-6 of a score)."""
    return _bce_of_targets(unit_targets(x), logits)


def _bce_of_targets(x: Tensor, logits: Tensor) -> Tensor:
    """:func:`bce_row_means` of targets already in [0, 1] (:func:`unit_targets`)."""
    logits = logits.float().flatten(1)
    dots = torch.bmm(x.unsqueeze(1), logits.unsqueeze(2)).view(-1)
    return (F.softplus(logits).sum(dim=1) - dots) / max(logits.shape[1], 1)


def row_scores(errors: Tensor, out: Any, kind: ScoreKind) -> Tensor:
    """Row scores from :func:`column_errors`: their mean, plus the per-row penalty for
    ``elbo``."""
    score = errors.mean(dim=1)
    if kind == "elbo":
        if out.row_penalty is None:
            raise ValueError("score 'elbo' needs a model with a per-row penalty (the VAE)")
        score = score + out.row_penalty.float()
    return score


def residual_scale(residuals: np.ndarray) -> np.ndarray:
    """Per-column typical residual for ``scaled_mse``: the median absolute training residual,
    floored at a tenth of its median over columns (and 1e-6), so a column reconstructed
    almost perfectly does not turn tiny deviations into huge scores."""
    typical = np.median(np.abs(residuals), axis=0)
    floor = max(0.1 * float(np.median(typical)), 1e-6)
    return np.maximum(typical, floor).astype(np.float32)


@dataclass(frozen=True)
class Scorer:
    """How one model turns reconstructions into anomaly scores, stored in its ``model.json``:
    the kind, the columns' residual scale (``scaled_mse``) and the calibration."""

    kind: ScoreKind
    calibration: ScoreCalibration
    feature_scale: tuple[float, ...] | None = None
    latent_mean: tuple[float, ...] | None = None  # hybrid: training codes' mean,
    latent_precision: tuple[float, ...] | None = None  # inverse covariance (row-major),
    mix: tuple[float, ...] | None = None  # and log-score median / spread of both parts
    # each input's mean error term over the training rows: what "usual" is per column, so a
    # row's columns are ranked by how unusual their error is (top_columns), not by its size
    column_typical: tuple[float, ...] | None = None
    # ensemble: how far below its training median a part's z-score counts (None: no floor,
    # the rule of models saved before the floor, which score as they were fitted)
    floor: float | None = None
    # the kind of the per-column errors that explain a row (top_columns), when not the
    # score's own: ``kl`` for a scaled score of a sigmoid head, the head's own divergence
    explain: ScoreKind | None = None
    # ensemble: training codes, isolation forest, column quantiles (files beside model.json)
    detectors: Detectors | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def threshold(self) -> float:
        """Rows scoring above this are flagged as anomalies."""
        return self.calibration.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        listed = {
            name: list(value) if value is not None else None
            for name in (
                "feature_scale",
                "latent_mean",
                "latent_precision",
                "mix",
                "column_typical",
            )
            for value in [getattr(self, name)]
        }
        extra = {k: v for k in ("floor", "explain") for v in [getattr(self, k)] if v is not None}
        return {"kind": self.kind, **listed, **extra, **self.calibration.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scorer:
        """Rebuild from :meth:`to_dict`'s form."""

        def floats(name: str) -> tuple[float, ...] | None:
            value = data.get(name)
            return tuple(float(v) for v in value) if value is not None else None

        return cls(
            data["kind"],
            ScoreCalibration.from_dict(data),
            floats("feature_scale"),
            floats("latent_mean"),
            floats("latent_precision"),
            floats("mix"),
            floats("column_typical"),
            float(data["floor"]) if data.get("floor") is not None else None,
            data.get("explain"),
        )

    @classmethod
    def from_meta(cls, meta: dict[str, Any], folder: str | Path | None = None) -> Scorer:
        """The scorer in a saved model's ``model.json`` (with an ``ensemble`` scorer's files
        from ``folder``, the model's folder); models saved before scorers existed score plain
        MSE against their stored threshold (no calibration quantiles)."""
        if "score" in meta:
            return cls.from_dict(meta["score"]).with_files(folder)
        threshold = float(meta["threshold"])
        return cls("mse", ScoreCalibration(threshold, "stored threshold", ()))

    def with_files(self, folder: str | Path | None) -> Scorer:
        """This scorer with the files an ``ensemble`` scorer keeps in the model's folder."""
        if self.kind != "ensemble":
            return self
        if folder is None:
            raise ValueError("an 'ensemble' scorer needs its model's folder to load its files")
        return dataclasses.replace(self, detectors=Detectors.load(folder))

    def save_files(self, folder: str | Path) -> None:
        """Write the files an ``ensemble`` scorer keeps beside ``model.json`` (none for
        other kinds)."""
        if self.detectors is not None:
            self.detectors.save(folder)

    def scale_tensor(self, device: torch.device | str = "cpu") -> Tensor | None:
        """``feature_scale`` as a tensor on ``device`` (None unless ``scaled_mse``)."""
        if self.feature_scale is None:
            return None
        return torch.tensor(self.feature_scale, dtype=torch.float32, device=device)

    def combine(self, recon: Tensor, codes: Tensor) -> Tensor:
        """The ``hybrid`` score from the scaled reconstruction error and the codes."""
        mean = torch.tensor(self.latent_mean, dtype=torch.float32, device=codes.device)
        k = len(self.latent_mean)
        precision = torch.tensor(self.latent_precision, dtype=torch.float32, device=codes.device)
        d = codes.float() - mean
        distance = ((d @ precision.reshape(k, k)) * d).sum(dim=1)
        rc, rs, lc, ls = self.mix
        tiny = 1e-12
        return (recon.clamp_min(tiny).log() - rc) / rs + (distance.clamp_min(tiny).log() - lc) / ls

    def ensemble_parts(self, recon: Tensor, codes: Tensor, x: Tensor) -> Tensor:
        """The ``ensemble`` score's four raw parts, rows x 4: the scaled reconstruction
        error, the codes' distance to their nearest training codes, the isolation score and
        the tail score of the inputs."""
        d = self.detectors
        if d is None:
            raise ValueError("an 'ensemble' scorer needs its detectors (the model's files)")
        return torch.stack([recon, d.neighbor_distance(codes), d.isolation(x), d.tails(x)], 1)

    def ensemble(self, parts: Tensor) -> Tensor:
        """The ``ensemble`` score: the mean of the four parts as robust z-scores (median
        and MAD over the training rows; of the logs of the error and the distance, the
        others on their own scale: the tail score is a sum of logs already), each floored
        at ``-floor``, so no part can veto what the others see."""
        center = torch.tensor(self.mix[0::2], dtype=torch.float32, device=parts.device)
        spread = torch.tensor(self.mix[1::2], dtype=torch.float32, device=parts.device)
        logged = torch.cat([parts[:, :2].clamp_min(1e-12).log(), parts[:, 2:]], 1)
        z = (logged - center) / spread
        return (z if self.floor is None else z.clamp_min(-self.floor)).mean(dim=1)


def log_center_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and robust spread (1.4826 MAD, at least 1e-6) of ``log(values)``."""
    center, spread = median_spread(np.log(np.maximum(np.asarray(values, np.float64), 1e-12)))
    return center, max(spread, 1e-6)


class RowScores(NamedTuple):
    """What :func:`score_rows` gives (NumPy float32): codes, scores, and on request each
    column's error terms, the plain MSE, the plain BCE and each column's mean error term."""

    codes: np.ndarray
    scores: np.ndarray
    per_column: np.ndarray | None = None
    mse: np.ndarray | None = None
    bce: np.ndarray | None = None
    column_mean: np.ndarray | None = None


def score_rows(
    model: Any,
    x: np.ndarray | Tensor,
    scorer: Scorer,
    *,
    batch_size: int = 1024,
    device: str = "auto",
    precision: str = "fp32",
    per_column: bool = False,
    mse: bool = False,
    bce: bool = False,
    column_mean: bool = False,
) -> RowScores:
    """Latent codes and anomaly scores of ``scorer``'s kind of ``x``, in one pass of batches;
    with ``per_column`` each column's error terms (rows x columns), with ``mse`` and ``bce``
    the plain reconstruction MSE and BCE too (comparable across models whatever their score
    kind), with ``column_mean`` each column's mean error term (summed batch by batch)."""
    codes, scores, columns, mses, bces = [], [], [], [], []
    column_sum: Tensor | None = None
    scale = None
    with torch.inference_mode():
        for xb, out in forward_batches(model, x, batch_size, device, precision):
            if scale is None and scorer.feature_scale is not None:
                scale = scorer.scale_tensor(xb.device)
            z = out.latent.float()
            matrix = per_column or column_mean
            if scorer.kind in ("bce", "kl") and out.logits is not None:  # matrix if asked
                row_means = bce_row_means if scorer.kind == "bce" else kl_row_means
                score = row_means(xb, out.logits)  # the same rows with or without it
                errors = column_errors(xb, out, scorer.kind, scale) if matrix else None
            else:
                errors = column_errors(xb, out, scorer.kind, scale)
                score = row_scores(errors, out, scorer.kind)
                if matrix and scorer.explain is not None:  # what explains a row
                    errors = column_errors(xb, out, scorer.explain, scale)
            if scorer.kind == "hybrid":
                score = scorer.combine(score, z)
            elif scorer.kind == "ensemble":
                score = scorer.ensemble(scorer.ensemble_parts(score, z, xb))
            codes.append(z.cpu())
            scores.append(score.cpu())
            if per_column:
                columns.append(errors.cpu())
            if column_mean:
                batch_sum = errors.double().sum(dim=0).cpu()
                column_sum = batch_sum if column_sum is None else column_sum + batch_sum
            if mse:
                mses.append(reconstruction_error(xb, out.recon, "mse").cpu())
            if bce:
                bces.append(reconstruction_error(xb.clamp(0, 1), out.recon, "bce").cpu())
    if not codes:
        empty = np.zeros(0, np.float32)
        width = (
            int(x.width) if is_rows(x) else (int(np.prod(x.shape[1:])) if len(x.shape) > 1 else 0)
        )
        return RowScores(
            np.zeros((0, model.config.code_size), np.float32),
            empty,
            np.zeros((0, width), np.float32) if per_column else None,
            empty if mse else None,
            empty if bce else None,
        )
    rows = sum(len(c) for c in codes)
    return RowScores(
        torch.cat(codes).numpy(),
        torch.cat(scores).numpy(),
        torch.cat(columns).numpy() if per_column else None,
        torch.cat(mses).numpy() if mse else None,
        torch.cat(bces).numpy() if bce else None,
        (column_sum / rows).float().numpy() if column_sum is not None else None,
    )


def fit_scorer(
    model: Any,
    x: np.ndarray | Tensor,
    kind: str = "auto",
    contamination: float | Literal["auto"] = 0.01,
    *,
    batch_size: int = 1024,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    data: DataKind = "unknown",
) -> tuple[Scorer, RowScores]:
    """The scorer of a trained ``model`` fitted on its training rows ``x`` (residual scale,
    latent statistics, threshold, calibration), and the training rows' codes and scores, from
    one forward pass over ``x``: the residuals and codes that fit the statistics also give the
    rows' scores (the same tensor operations :func:`score_rows` applies, so the training
    scores equal what scoring the rows again gives). ``data``: what the rows are (for
    ``auto``: :func:`resolve_score`)."""
    resolved = resolve_score(kind, model.config.output, model.model_name, data)
    if resolved not in SCALED:
        scorer = Scorer(resolved, ScoreCalibration(0.0, "", ()))
        fitted = score_rows(
            model,
            x,
            scorer,
            batch_size=batch_size,
            device=device,
            precision=precision,
            column_mean=True,
        )
        calibration = ScoreCalibration.fit(fitted.scores, contamination)
        typical = tuple(float(v) for v in fitted.column_mean)
        fitted = fitted._replace(column_mean=None)
        return dataclasses.replace(scorer, calibration=calibration, column_typical=typical), fitted
    passed = _TrainingPass.run(model, x, resolved, batch_size, device, precision)
    scorer = passed.scaled_scorer(resolved)
    if resolved == "hybrid":
        scorer = passed.hybrid(scorer)
    part_batches: list[Tensor] = []
    if resolved == "ensemble":
        scorer, part_batches = passed.ensemble(scorer, seed)
    scale_t = scorer.scale_tensor()
    scores = []
    with torch.inference_mode():
        for i, (residual, z) in enumerate(
            zip(passed.residual_batches, passed.latent_batches, strict=True)
        ):
            score = (residual / scale_t).square().mean(dim=1)  # column_errors, row_scores
            if resolved == "hybrid":
                score = scorer.combine(score, z)
            elif resolved == "ensemble":
                score = scorer.ensemble(part_batches[i])  # the parts score_rows computes
            scores.append(score)
    fitted = RowScores(passed.latents.numpy(), torch.cat(scores).numpy())
    calibration = ScoreCalibration.fit(fitted.scores, contamination)
    return dataclasses.replace(scorer, calibration=calibration), fitted


@dataclass
class _TrainingPass:
    """One forward pass over the training rows, batch by batch: residuals, codes, inputs
    (ensemble only) and the sum of the explaining kind's per-column errors."""

    residual_batches: list[Tensor]
    latent_batches: list[Tensor]
    input_batches: list[Tensor]
    explain: ScoreKind | None
    explain_sum: Tensor | None

    @classmethod
    def run(
        cls, model: Any, x: Any, resolved: str, batch_size: int, device: str, precision: str
    ) -> _TrainingPass:
        """The pass over ``x``."""
        passed = cls([], [], [], None, None)
        # a sigmoid head's rows are explained by its own divergence (kl), not the scaled residual
        passed.explain = "kl" if model.config.output == "sigmoid" else None
        with torch.inference_mode():
            for xb, out in forward_batches(model, x, batch_size, device, precision):
                passed.residual_batches.append(
                    (out.recon.float().flatten(1) - xb.float().flatten(1)).cpu()
                )
                passed.latent_batches.append(out.latent.float().cpu())
                if resolved == "ensemble":
                    passed.input_batches.append(xb.float().flatten(1).cpu())
                if passed.explain is not None:
                    batch_sum = column_errors(xb, out, passed.explain).double().sum(dim=0).cpu()
                    total = passed.explain_sum
                    passed.explain_sum = batch_sum if total is None else total + batch_sum
        return passed

    @functools.cached_property
    def residuals(self) -> np.ndarray:
        """Every row's residual (reconstruction minus input)."""
        return torch.cat(self.residual_batches).numpy()

    @functools.cached_property
    def latents(self) -> Tensor:
        """Every row's code."""
        return torch.cat(self.latent_batches)

    def scaled_scorer(self, resolved: str) -> Scorer:
        """A scaled-residual scorer: the residuals' scale and each column's typical error
        (of the explaining kind, else of the scaled residual); not yet calibrated."""
        residuals = self.residuals
        scale = tuple(float(v) for v in residual_scale(residuals))
        if self.explain_sum is not None:
            column_typical = (self.explain_sum / max(len(residuals), 1)).numpy()
        else:
            column_typical = np.mean(np.square(residuals / np.asarray(scale, np.float32)), axis=0)
        typical = tuple(float(v) for v in column_typical)
        placeholder = ScoreCalibration(0.0, "", ())
        return Scorer(resolved, placeholder, scale, column_typical=typical, explain=self.explain)

    def hybrid(self, scorer: Scorer) -> Scorer:
        """``scorer`` with the codes' mean and precision matrix and the two parts' log
        centers and spreads: the hybrid score's statistics."""
        codes = self.latents.numpy().astype(np.float64)
        mean = codes.mean(axis=0)
        centered = codes - mean
        cov = centered.T @ centered / max(len(codes) - 1, 1)
        cov += np.eye(len(mean)) * (1e-6 + 1e-6 * float(np.trace(cov)) / len(mean))
        precision_matrix = np.linalg.pinv(cov)
        distance = np.einsum("ij,jk,ik->i", centered, precision_matrix, centered)
        recon = np.mean(
            np.square(self.residuals / np.asarray(scorer.feature_scale, np.float32)), axis=1
        )
        return Scorer(
            "hybrid",
            scorer.calibration,
            scorer.feature_scale,
            tuple(float(v) for v in mean),
            tuple(float(v) for v in precision_matrix.reshape(-1)),
            (*log_center_spread(recon), *log_center_spread(distance)),
            scorer.column_typical,
            explain=self.explain,
        )

    def ensemble(self, scorer: Scorer, seed: int) -> tuple[Scorer, list[Tensor]]:
        """``scorer`` with the ensemble's detectors fitted and its parts' mix, and each
        batch's parts (the same :meth:`Scorer.ensemble_parts` scoring computes)."""
        detectors = Detectors.fit(self.latents.numpy(), torch.cat(self.input_batches).numpy(), seed)
        scorer = dataclasses.replace(scorer, kind="ensemble", detectors=detectors)
        scale_t = scorer.scale_tensor()
        with torch.inference_mode():
            part_batches = [
                scorer.ensemble_parts((residual / scale_t).square().mean(dim=1), z, inputs)
                for residual, z, inputs in zip(
                    self.residual_batches, self.latent_batches, self.input_batches, strict=True
                )
            ]
        parts = torch.cat(part_batches).numpy().astype(np.float64)
        mix = [*log_center_spread(parts[:, 0]), *log_center_spread(parts[:, 1])]
        for column in (2, 3):
            center, spread = median_spread(parts[:, column])
            mix += [center, max(spread, 1e-6)]
        return dataclasses.replace(scorer, mix=tuple(mix), floor=ENSEMBLE_FLOOR), part_batches
