"""The MLflow model registry, in one place: versions, aliases, promotion tags, the lock.

Every call aepipe makes to the registry is here, so what "champion" means, how a decision is
recorded and how runs take turns is read in one file. The stages (``register``, ``score``,
``downstream``) and the CLI's ``aepipe models`` call these functions; the feature store never
talks to the registry: it is handed version numbers, or :func:`alias_resolver`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from feature_store import FeatureStoreError, record_aliases
from stores import Stores
from stores.locks import store_lock
from stores.space import within
from tasks.config import ConfigError, PipelineConfig, build_config
from tasks.tracking import configure_mlflow

CHAMPION, CHALLENGER = "champion", "challenger"
AUTOMATIC, MANUAL = "promotion", "promotion.manual"  # tag prefixes of the two decision kinds
EVAL_METRIC = "eval_mse"  # mean reconstruction MSE on the fixed evaluation split, scored live
COMPARE_METRICS = (
    EVAL_METRIC,
    "test_mse",
    "test_bce",
    "codes_logreg_accuracy",
    "codes_5nn_accuracy",
    "test_auroc",
    "best_epoch",
    "train_seconds",
)


def registry_client(stores: Stores) -> Any:
    """An MLflow client on an existing store; a ConfigError (nothing created) when absent."""
    db = stores.tracking_uri.removeprefix("sqlite:///")
    if stores.tracking_uri.startswith("sqlite:///") and not Path(db).exists():
        raise ConfigError(f"no MLflow store at {db}; run `aepipe run` first or set AEPIPE_HOME")
    return configure_mlflow(stores)


@contextmanager
def registry_lock(stores: Stores, model_name: str) -> Iterator[None]:
    """Runs (processes or threads, on this machine or others) take turns inside: registering
    a version and promoting it is a read-then-write that two runs at once would interleave.
    See :func:`stores.locks.store_lock` (a PostgreSQL advisory lock where the catalog is
    PostgreSQL, else a lock file under ``<home>/locks``)."""
    with store_lock(stores, f"registry-{model_name}"):
        yield


@contextmanager
def scoring_lock(stores: Stores, dataset: str) -> Iterator[None]:
    """Scoring runs of one data set take turns from finding the new rows to appending them:
    two at once would both find the same rows new and both append them."""
    with store_lock(stores, f"scoring-{dataset}"):
        yield


DATASET_TAG = "aepipe.dataset"  # on a registered model and its runs: the data set it models
CONFIG_ARTIFACT = "aepipe/config.json"  # in a training run: the config it was trained with


def bound_dataset(client: Any, name: str) -> str | None:
    """The data set the registered model ``name`` models: its ``aepipe.dataset`` tag, else
    (a model registered before the tag) the data set of its first version's experiment; None
    when there is no such model or nothing says."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None
    if DATASET_TAG in (model.tags or {}):
        return str(model.tags[DATASET_TAG])
    versions = client.search_model_versions(
        f"name='{name}'", max_results=1, order_by=["version_number ASC"]
    )
    if not versions or not versions[0].run_id:
        return None
    run = client.get_run(versions[0].run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    return experiment.removeprefix("aepipe-") if experiment.startswith("aepipe-") else None


def check_model_binding(model_name: str, dataset: str, client: Any) -> None:
    """Refuse (ConfigError) to train or score data set ``dataset`` with a registered model
    that models another: its champion would be judged on, or score, columns it never saw."""
    bound = bound_dataset(client, model_name)
    if bound is not None and bound != dataset:
        raise ConfigError(
            f"registered model {model_name!r} models the data set {bound!r}, not {dataset!r}; "
            f"name another with registered_model (--registered-model), e.g. 'aepipe-{dataset}'"
        )


def trained_config(client: Any, name: str, version: int | str, dataset: str) -> dict[str, Any]:
    """The config version ``version`` of ``name`` was trained with, from its training run
    (what a retrain of the data set reuses); a ConfigError when the version does not model
    ``dataset`` or its run kept no config."""
    import mlflow
    from mlflow.exceptions import MlflowException

    check_model_binding(name, dataset, client)
    mv = _get_version(client, name, version)
    try:
        stored = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{CONFIG_ARTIFACT}")
    except (MlflowException, OSError):
        raise ConfigError(
            f"version {version} of {name!r} kept no training config (it predates aepipe "
            f"storing one); retrain {dataset!r} once with `aepipe run`"
        ) from None
    if not isinstance(stored, dict) or stored.get("dataset") != dataset:
        raise ConfigError(f"version {version} of {name!r} was not trained on {dataset!r}")
    return stored


class RetrainRequest(BaseModel):
    """What a drift event asks of the reduce-features deployment: retrain ``dataset`` with the
    config version ``version`` of ``registered_model`` was trained with, as the tracking store
    kept it. Names only: an event never carries a config, so it cannot choose a place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    registered_model: str
    version: int = Field(ge=1)

    @model_validator(mode="after")
    def _names(self) -> RetrainRequest:
        PipelineConfig(dataset=self.dataset, registered_model=self.registered_model)
        return self


def retrain_config(
    request: RetrainRequest, deployment_cfg: PipelineConfig, stores: Stores
) -> PipelineConfig:
    """The config a drift-triggered retrain runs with: the one the drifted version was trained
    with, from ``stores``' tracking store, in the deployment's own home."""
    stored = trained_config(
        registry_client(stores), request.registered_model, request.version, request.dataset
    )
    return build_config({**stored, "home": deployment_cfg.home})


def version_by_alias(client: Any, name: str, alias: str = CHAMPION) -> Any | None:
    """The model version holding ``alias``, or None when no version does."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_version(model_name: str, stores: Stores) -> Any:
    """The MLflow model version holding ``champion``; a ConfigError (nothing created) when
    there is no store, model or champion."""
    found = version_by_alias(registry_client(stores), model_name, CHAMPION)
    if found is None:
        raise ConfigError(
            f"registered model {model_name!r} has no champion to score with; run `aepipe run` first"
        )
    return found


def aliases_of(client: Any, name: str) -> dict[str, int]:
    """Every alias of a registered model and the version it points to."""
    model = client.get_registered_model(name)
    return {alias: int(v) for alias, v in (model.aliases or {}).items()}


def current_aliases(model_name: str, stores: Stores) -> dict[str, int] | None:
    """The registered model's aliases now: what a feature table records with each commit of
    its rows; None when the registry cannot say (no store, no such model), so the table's
    record is left as it is."""
    from mlflow.exceptions import MlflowException

    try:
        return aliases_of(registry_client(stores), model_name)
    except (MlflowException, ConfigError):
        return None


def alias_resolver(stores: Stores) -> Callable[[str, str], int]:
    """A resolver for feature-table reads: ``(model_name, alias) -> version``, asked of the
    registry at the time of the call."""

    def resolve(model_name: str, alias: str) -> int:
        found = version_by_alias(registry_client(stores), model_name, alias)
        if found is None:
            raise FeatureStoreError(
                f"registered model {model_name!r} has no version with alias {alias!r}"
            )
        return int(found.version)

    return resolve


def register_challenger(client: Any, model_uri: str, name: str) -> int:
    """Register the logged model as a new version of ``name`` holding ``challenger``."""
    import mlflow

    version = int(mlflow.register_model(model_uri, name).version)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    return version


def make_champion(client: Any, name: str, version: int | str) -> None:
    """Give ``version`` the ``champion`` alias; it stops being the challenger."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if str(aliases_of(client, name).get(CHALLENGER, "")) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)


def load_version_model(name: str, version: int | str) -> Any:
    """A registered version as an MLflow pyfunc model (its own logged code and normalizer)."""
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{name}/{version}")


def record_decision(
    client: Any,
    name: str,
    version: int,
    *,
    decision: str,
    metric: str,
    challenger_value: float | None,
    champion_value: float | None,
    champion_version: str | None,
    reason: str,
    prefix: str = AUTOMATIC,
) -> None:
    """Write a promotion decision onto the version as ``<prefix>.*`` tags: ``promotion.*`` for
    a run's automatic decision, ``promotion.manual.*`` for one made by hand, so a manual
    promotion keeps the automatic decision's record beside its own."""

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    tags = {
        f"{prefix}.decision": decision,
        f"{prefix}.metric": metric,
        f"{prefix}.challenger_value": fmt(challenger_value),
        f"{prefix}.champion_value": fmt(champion_value),
        f"{prefix}.champion_version": champion_version or "",
        f"{prefix}.reason": reason,
        f"{prefix}.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def download_version(name: str, version: int | str, folder: Path, root: Path) -> Path:
    """Fetch a registered version's aepipe model folder (weights, config, normalizer spec)
    into ``folder`` (kept when already there), atomically; ``folder`` must lie in ``root``
    (the models store) with no link between them, since a failed or stale copy is removed."""
    import mlflow

    if not within(folder, root):
        raise ConfigError(
            f"the model folder {folder} is reached through a symbolic link out of the models "
            f"store {root}; aepipe only writes and removes its own folders there: remove the link"
        )
    if (folder / "model.json").exists():
        return folder
    staging = folder.with_name(f".{version}.{os.getpid()}.download")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(staging)
    )
    found = next(staging.rglob("model.json"), None)
    if found is None:
        raise ConfigError(f"model {name!r} v{version} has no aepipe model folder")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(found.parent, folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


# -- the registry as users see it (`aepipe models ...`) ----------------------------------


def _get_model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = [m.name for m in client.search_registered_models()]
        raise ConfigError(f"unknown registered model {name!r}; available: {names}") from None


def _get_version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    _get_model(client, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ConfigError(
            f"model {name!r} has no version {version!r}; versions: {versions}"
        ) from None


def list_registered(stores: Stores) -> pd.DataFrame:
    """One row per registered model: versions, champion, challenger."""
    client = registry_client(stores)
    rows = []
    for m in client.search_registered_models():
        aliases = m.aliases or {}
        versions = client.search_model_versions(f"name='{m.name}'")
        rows.append(
            {
                "model": m.name,
                "versions": len(versions),
                "champion": str(aliases.get(CHAMPION, "")),
                "challenger": str(aliases.get(CHALLENGER, "")),
            }
        )
    return pd.DataFrame(rows, columns=["model", "versions", "champion", "challenger"])


def compare_versions(name: str, stores: Stores) -> pd.DataFrame:
    """A table of a model's versions with their metrics, aliases and promotion decisions."""
    client = registry_client(stores)
    model = _get_model(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in (model.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        metrics = client.get_run(mv.run_id).data.metrics
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
        }
        row.update({k: metrics.get(k) for k in COMPARE_METRICS if k in metrics})
        # the latest decision: a manual one when made, with the run's own kept beside it
        auto, manual = (mv.tags.get(f"{p}.decision", "") for p in (AUTOMATIC, MANUAL))
        row["decision"] = manual or auto
        row["reason"] = mv.tags.get(f"{MANUAL if manual else AUTOMATIC}.reason", "")
        if manual and auto:
            row["reason"] += f" (the run decided: {auto}, {mv.tags.get(AUTOMATIC + '.reason')})"
        rows.append(row)
    frame = pd.DataFrame(rows)
    metrics = [m for m in COMPARE_METRICS if m in frame.columns]
    return frame[["version", "aliases", *metrics, "decision", "reason"]]


def promote_manually(name: str, version: str | int, stores: Stores, note: str = "") -> str:
    """Give ``version`` the ``champion`` alias by hand, recorded like an automatic decision."""
    client = registry_client(stores)
    mv = _get_version(client, name, version)
    current = version_by_alias(client, name, CHAMPION)
    if current is not None and str(current.version) == str(mv.version):
        return f"{name} version {mv.version} is already the champion"
    with registry_lock(stores, name):  # as a run's promotion and table commit do
        make_champion(client, name, mv.version)
        record_aliases(name, aliases_of(client, name), stores)  # readers of its tables follow
    previous = str(current.version) if current is not None else None
    reason = "manual promotion" + (f": {note}" if note else "")
    record_decision(
        client,
        name,
        int(mv.version),
        decision="promoted (manual)",
        metric="",
        challenger_value=None,
        champion_value=None,
        champion_version=previous,
        reason=reason,
        prefix=MANUAL,
    )
    return f"{name} version {mv.version} is now the champion (was {previous or 'none'})"
