"""The MLflow pyfunc model, logged as code (MLflow "models from code"): nothing is pickled.

``predict`` takes raw rows (the columns the user ingested, before normalization) and returns
the entity id, the latent code ``z_*``, ``recon_error`` (the model's anomaly score),
``anomaly_score`` (calibrated to [0, 1]), ``is_anomaly`` and ``recon_mse`` (the plain
reconstruction MSE, which compares models whatever their score kind). The model folder
(state-dict weights, JSON config, JSON normalizer spec) travels as the artifact ``model_dir``.

This file is logged on its own, with ``ae_models`` as the model's only code: it imports
nothing else of aepipe, so a served model carries the network and its preprocessing and
nothing of the pipeline.
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
        from ae_models.preprocessing import NORMALIZER_FILE, Normalizer
        from ae_models.scoring import Scorer

        self.model, self.meta = load_model(folder)
        self.normalizer = Normalizer.load(Path(folder) / NORMALIZER_FILE)
        self.scorer = Scorer.from_meta(self.meta, folder)
        return self

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        from ae_models.outputs import KNOWN_INPUTS, score_outputs
        from ae_models.vocabulary import ENTITY_KEY

        frame = pd.DataFrame(model_input)
        check_request(frame)
        x = self.normalizer.transform(frame, KNOWN_INPUTS)
        scored = score_outputs(self.model, x, self.scorer, mse=True)
        ids = (
            frame[ENTITY_KEY].astype(str).to_numpy()
            if ENTITY_KEY in frame.columns
            else frame.index.astype(str).to_numpy()
        )
        return pd.DataFrame({ENTITY_KEY: ids, **scored.columns()})


ENV_MAX_ROWS = "AEPIPE_SERVE_MAX_ROWS"
DEFAULT_MAX_ROWS = 10_000


def check_request(frame: pd.DataFrame) -> None:
    """Refuse (MLflow's 400) rows the model must not score: an infinite value, which the
    pipeline quarantines and min-max scaling would hide; and, in a scoring server, more rows
    than ``$AEPIPE_SERVE_MAX_ROWS`` (10,000) in one request. Batch scoring in Python
    (``mlflow.pyfunc.load_model(...).predict``) takes any number of rows."""
    import os

    import numpy as np
    from mlflow.exceptions import MlflowException

    serving = os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() == "true"
    limit = int(os.environ.get(ENV_MAX_ROWS, DEFAULT_MAX_ROWS))
    if serving and len(frame) > limit:
        raise MlflowException.invalid_parameter_value(
            f"{len(frame):,} rows in one request; this server takes at most {limit:,} "
            f"({ENV_MAX_ROWS}): send them in parts"
        )
    numbers = frame.select_dtypes(include="number")
    if numbers.shape[1]:
        bad = np.isinf(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise MlflowException.invalid_parameter_value(
                f"row {row}, column {numbers.columns[col]!r} holds "
                f"{numbers.iat[row, col]}: infinite values cannot be scored"
            )


mlflow.models.set_model(AutoencoderPyfunc())
