"""aepipe's library log lines reach the Prefect run's logs, and stay quiet outside runs."""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from prefect import flow

import ae_models
import flows  # noqa: F401  (importing the flows package sends aepipe's logs to Prefect)


@flow(name="log-bridge-check")
def train_with_early_stop() -> str:
    """Train until early stopping: ae_models.training.loop logs the stop at INFO."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 6)).astype(np.float32)
    model = ae_models.create_model("deep", input_dim=6, code_size=2)
    cfg = ae_models.TrainConfig(epochs=40, patience=1, lr=1e-5, batch_size=32)
    ae_models.train(model, x, x[:16], cfg)
    return "trained"


def test_a_library_log_line_is_in_the_flow_runs_logs(prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    state = train_with_early_stop(return_state=True)
    run_id = state.state_details.flow_run_id
    deadline = time.monotonic() + 60
    while True:  # logs reach the server in batches, a second or two after the run
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        ours = [entry for entry in logs if entry.name == "ae_models.training.loop"]
        if ours or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ours, [entry.name for entry in logs]
    assert "early stop at epoch" in ours[0].message


def test_outside_a_run_library_logs_raise_no_prefect_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Prefect's handler warns outside a run
        logging.getLogger("ae_models.training.loop").info("outside any run")
        logging.getLogger("feature_store").warning("outside any run")
