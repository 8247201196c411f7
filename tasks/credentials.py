"""Store settings and credentials from a Prefect Secret block, for deployed runs.

A deployment names a Secret block in ``AEPIPE_SECRET_BLOCK`` (``prefect.yaml`` sets
``aepipe-stores`` for every deployment); the block holds a JSON object of the store settings
and credentials a run needs, for example::

    {"AEPIPE_TRACKING_URI": "https://mlflow.example.com",
     "MLFLOW_TRACKING_USERNAME": "aepipe", "MLFLOW_TRACKING_PASSWORD": "...",
     "AEPIPE_CATALOG": "postgresql+psycopg2://aepipe:...@db:5432/catalog"}

A run loads it before it resolves its stores and puts the values in its own process's
environment (a worker starts one process per flow run), so nothing secret is in the
deployment, the flow parameters or the worker's shell. The values are encrypted at rest by
Prefect and never logged; only the names are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from stores import Stores, resolve_stores
from tasks.config import ConfigError, PipelineConfig

logger = logging.getLogger(__name__)

ENV_SECRET_BLOCK = "AEPIPE_SECRET_BLOCK"
# what a block may set: the store settings and the credentials their clients read
ALLOWED_SETTINGS = (
    "AEPIPE_HOME",
    "AEPIPE_TRACKING_URI",
    "AEPIPE_CATALOG",
    "AEPIPE_CATALOG_URI",
    "AEPIPE_WAREHOUSE",
    "AEPIPE_DATA",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "PGPASSWORD",
)


def load_secret_block(name: str | None = None) -> list[str]:
    """Put the settings of the Secret block ``name`` (default ``$AEPIPE_SECRET_BLOCK``) into
    this process's environment, over what it had; return the names set. No name: nothing
    happens. A block that does not exist is logged and skipped (the run uses this machine's
    environment); a block that is not a JSON object of known settings is a ConfigError."""
    name = name if name is not None else os.environ.get(ENV_SECRET_BLOCK, "")
    if not name:
        return []
    from prefect.blocks.system import Secret

    try:
        value: Any = Secret.load(name).get()
    except ValueError as err:
        if "Unable to find block document" not in str(err):
            raise
        logger.info("no Secret block %r: store settings come from this machine's environment", name)
        return []
    if not isinstance(value, dict):
        raise ConfigError(
            f"Secret block {name!r} must hold a JSON object of settings such as "
            f'{{"AEPIPE_TRACKING_URI": "..."}}, not a {type(value).__name__}'
        )
    unknown = sorted(set(value) - set(ALLOWED_SETTINGS))
    if unknown:
        raise ConfigError(
            f"Secret block {name!r} sets {unknown}, which aepipe does not read; "
            f"allowed: {list(ALLOWED_SETTINGS)}"
        )
    bad = sorted(k for k, v in value.items() if not isinstance(v, str))
    if bad:
        raise ConfigError(f"Secret block {name!r}: the values of {bad} must be strings")
    os.environ.update(value)
    logger.info("store settings from Secret block %r: %s", name, ", ".join(sorted(value)))
    return sorted(value)


def run_stores(cfg: PipelineConfig, handed: Iterable[str] = ()) -> Stores:
    """The stores of a flow run: the deployment's Secret block first, then
    :func:`stores.resolve_stores` for ``cfg.home``; in a run started from a deployment, the
    places its parameters name (and the ``handed`` files) checked against the deployment's
    own and the operator's allow-list first (:mod:`tasks.places`)."""
    from tasks.places import check_deployed_run

    load_secret_block()
    stores = resolve_stores(cfg.home)
    check_deployed_run(cfg, stores.data, handed)
    return stores
