"""The MLflow pyfunc model, logged as code (MLflow "models from code"): nothing is pickled.

``predict`` takes raw rows (the columns the user ingested, before normalization) and returns
the entity id, the latent code ``z_*``, ``recon_error`` (the model's anomaly score),
``anomaly_score`` (calibrated to [0, 1]), ``is_anomaly`` and ``recon_mse`` (the plain
reconstruction MSE, which compares models whatever their score kind). The model folder
(state-dict weights, JSON config, JSON normalizer spec) travels as the artifact ``model_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class AutoencoderPyfunc(PythonModel):
    """Raw rows in; entity id, ``z_*``, ``recon_error``, ``anomaly_score``, ``is_anomaly`` out."""

    def load_context(self, context: Any) -> None:
        self.load_folder(context.artifacts["model_dir"])

    def load_folder(self, folder: str | Path) -> AutoencoderPyfunc:
        """Load weights, config and normalizer spec from a model folder (no pickle)."""
        from ae_models import load_model
        from tasks.normalize import Normalizer

        self.model, self.meta = load_model(folder)
        self.normalizer = Normalizer.load(Path(folder) / "normalizer.json")
        return self

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        from ae_models.runtime import SCORING_PRECISION
        from ae_models.scoring import Scorer, score_rows

        frame = pd.DataFrame(model_input)
        known = ("entity_id", "event_timestamp", "label")
        x = self.normalizer.transform(frame, known)
        scorer = Scorer.from_meta(self.meta)
        codes, scores, _, mse = score_rows(
            self.model, x, scorer, precision=SCORING_PRECISION, mse=True
        )
        ids = (
            frame["entity_id"].astype(str).to_numpy()
            if "entity_id" in frame.columns
            else frame.index.astype(str).to_numpy()
        )
        out = pd.DataFrame({"entity_id": ids})
        for j in range(codes.shape[1]):
            out[f"z_{j}"] = codes[:, j]
        out["recon_error"] = scores
        out["recon_mse"] = mse  # comparable across models, whatever their score kind
        if scorer.calibration.quantiles:
            out["anomaly_score"] = scorer.calibration.calibrate(scores)
        out["is_anomaly"] = scores > scorer.threshold
        return out


mlflow.models.set_model(AutoencoderPyfunc())
