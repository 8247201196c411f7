"""aepipe's vocabulary, declared once: the names every package uses for the same things.

The ground floor of the code base: this module imports nothing, so every package may import
it (``feature_store`` and ``stores`` included, which import nothing else of ``ae_models``),
and a served model, which carries ``ae_models`` alone, has it too.

- the role columns every ingested and normalized file carries beside the features;
- the splits, whose position is their code in the normalized files (0 train, 1 val, 2 test);
- the model's output columns, which are the feature table's columns of the same names;
- the autoencoder variants aepipe ships.
"""

from __future__ import annotations

# the role columns: the entity key, the event time, the label (kept aside, never a model
# input) and the split (normalized files only)
ENTITY_KEY = "entity_id"
EVENT_TIMESTAMP = "event_timestamp"
LABEL = "label"
SPLIT = "split"
ROLE_COLUMNS = (ENTITY_KEY, EVENT_TIMESTAMP, LABEL, SPLIT)

# the splits, in code order: SPLITS[code] is a split's name
TRAIN, VAL, TEST = SPLITS = ("train", "val", "test")

# what a model gives for each row: the latent code z_0 ... z_{k-1}, then its scores
LATENT_PREFIX = "z_"
RECON_ERROR = "recon_error"  # the anomaly score of the model's kind: higher is more unusual
ANOMALY_SCORE = "anomaly_score"  # recon_error calibrated to [0, 1] by the training scores
IS_ANOMALY = "is_anomaly"  # recon_error above the model's threshold
RECON_MSE = "recon_mse"  # the plain reconstruction MSE: comparable across models (serving)
MODEL_OUTPUT_COLUMNS = (RECON_ERROR, ANOMALY_SCORE, IS_ANOMALY)
TOP_COLUMNS = "top_columns"  # the source columns contributing most to a row's score

# the feature table's provenance columns: which model version wrote a row, and when
MODEL_NAME, MODEL_VERSION, RUN_ID, SCORED_AT = "model_name", "model_version", "run_id", "scored_at"

# the autoencoder variants aepipe ships (ae_models.variants.registry registers each under its name)
VARIANTS = ("contractive", "conv", "deep", "denoising", "sparse", "vae")


def latent_columns(code_size: int) -> list[str]:
    """Names of the latent code columns: ``z_0`` … ``z_{code_size-1}``."""
    return [f"{LATENT_PREFIX}{i}" for i in range(code_size)]
