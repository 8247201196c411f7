"""Which places a deployed run may name: an allow-list the operator sets on the workers.

Anyone who can create a flow run of a deployment, or emit an event its trigger answers,
chooses the run's parameters. The settings that name a place (the home, the source and its
labels file, a Dask scheduler, a training deployment, the files a training run is handed)
would let them make a worker read or write anywhere it can, or connect wherever they like.
A run started from a deployment therefore takes such a setting only when it is the
deployment's own (what ``prefect deploy`` stored) or the operator allowed it in the worker's
environment (``prefect.yaml``'s ``job_variables.env`` or the worker's shell):

- ``AEPIPE_ALLOWED_PATHS``: folders (absolute) and URI prefixes (``s3://bucket/in/``) under
  which a source, labels file, home or handed-over file may lie, comma-separated;
- ``AEPIPE_ALLOWED_DASK``: Dask scheduler addresses (``tcp://10.0.0.5:8786``);
- ``AEPIPE_ALLOWED_DEPLOYMENTS``: training deployments (default
  ``train-autoencoder/train-autoencoder``).

Runs started by hand (``aepipe run``, a flow called in Python) are the operator's own and
are not checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import ConfigError, PipelineConfig
from tasks.io.readers import BUILTIN_SOURCES

ENV_PATHS = "AEPIPE_ALLOWED_PATHS"
ENV_DASK = "AEPIPE_ALLOWED_DASK"
ENV_DEPLOYMENTS = "AEPIPE_ALLOWED_DEPLOYMENTS"
DEFAULT_DEPLOYMENTS = ("train-autoencoder/train-autoencoder",)


@dataclass(frozen=True)
class Allowed:
    """The operator's allow-list: path roots and URI prefixes, Dask addresses, deployments."""

    paths: tuple[str, ...] = ()
    dask: tuple[str, ...] = ()
    deployments: tuple[str, ...] = DEFAULT_DEPLOYMENTS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Allowed:
        """The allow-list in ``env`` (default: this process's environment)."""
        env = os.environ if env is None else env

        def items(name: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

        roots = items(ENV_PATHS)
        relative = [p for p in roots if "://" not in p and not os.path.isabs(p)]
        if relative:
            raise ConfigError(f"{ENV_PATHS} must name absolute folders or URIs, not {relative}")
        return cls(roots, items(ENV_DASK), items(ENV_DEPLOYMENTS) or DEFAULT_DEPLOYMENTS)

    def path_allowed(self, value: str) -> bool:
        """Whether a path or URI lies under an allowed root (links resolved first)."""
        if "://" in value and not value.startswith("file://"):
            if "/../" in f"{value}/" or "/./" in f"{value}/":
                return False  # an object key is literal, but some clients normalize it
            return any(
                "://" in root
                and (value == root.rstrip("/") or value.startswith(root.rstrip("/") + "/"))
                for root in self.paths
            )
        real = Path(os.path.realpath(value.removeprefix("file://")))
        for root in self.paths:
            if "://" in root and not root.startswith("file://"):
                continue
            base = Path(os.path.realpath(root.removeprefix("file://")))
            if real == base or base in real.parents:
                return True
        return False


def named_places(cfg: PipelineConfig) -> dict[str, str]:
    """The settings of ``cfg`` that name a place, by their config keys."""
    places = {
        "home": cfg.home,
        "source.path": None if cfg.source.path in BUILTIN_SOURCES else cfg.source.path,
        "source.labels_path": cfg.source.labels_path,
        "dask_address": cfg.dask_address,
        "train_deployment": cfg.train_deployment,
    }
    return {k: str(v) for k, v in places.items() if v is not None}


def check_places(
    cfg: PipelineConfig,
    deployment_config: PipelineConfig | None,
    allowed: Allowed,
    handed: Iterable[str] = (),
) -> None:
    """Raise ConfigError unless every place ``cfg`` names is the deployment's own
    (``deployment_config``) or allowed; ``handed`` files (a training run's inputs) must lie
    under an allowed root or the run's data store, which the caller adds to ``allowed``."""
    own = named_places(deployment_config) if deployment_config is not None else {}
    for key, value in named_places(cfg).items():
        if own.get(key) == value:
            continue
        if key == "dask_address":
            ok, setting = value in allowed.dask, ENV_DASK
        elif key == "train_deployment":
            ok, setting = value in allowed.deployments, ENV_DEPLOYMENTS
        else:
            ok, setting = allowed.path_allowed(value), ENV_PATHS
        if not ok:
            raise ConfigError(
                f"{key} {value!r} is not this deployment's own and not allowed on this "
                f"worker; to allow it, add it to {setting} in the worker's environment"
            )
    for value in handed:
        if not allowed.path_allowed(value):
            raise ConfigError(
                f"the file {value!r} handed to this run lies outside its data store and {ENV_PATHS}"
            )


def deployment_parameters() -> dict[str, Any] | None:
    """The stored parameters of the deployment this flow run belongs to, or None when the run
    was not started from a deployment."""
    from prefect.runtime import deployment

    deployment_id = deployment.id
    if not deployment_id:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return dict(client.read_deployment(deployment_id).parameters or {})


def check_deployed_run(cfg: PipelineConfig, data_root: str, handed: Iterable[str] = ()) -> None:
    """In a run started from a deployment, refuse the places its parameters name that are
    neither the deployment's own nor allowed (see the module's text); elsewhere, nothing.
    ``data_root`` (the run's data store) is where handed files may lie besides."""
    stored = deployment_parameters()
    if stored is None:
        return
    own = stored.get("config")
    deployment_config = PipelineConfig.model_validate(own) if own else PipelineConfig()
    allowed = Allowed.from_env()
    if handed:
        allowed = Allowed((*allowed.paths, data_root), allowed.dask, allowed.deployments)
    check_places(cfg, deployment_config, allowed, handed)
