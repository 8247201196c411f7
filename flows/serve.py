"""``aepipe serve``: the deployments of ``prefect.yaml`` served from one process.

``prefect.serve()`` is Prefect's way to run deployments on a single machine without work
pools or workers: this process registers the deployments (schedules, the drift trigger and
the training concurrency limit included), polls the server and runs each scheduled or
requested flow run in a subprocess of its own. ``prefect.yaml`` stays the one definition:
its deployments are read here, and a config file given on the command line replaces the
``config`` parameter of those that take one.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import yaml

from tasks.config import ConfigError

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def _flow(entrypoint: str) -> Any:
    """The flow object an entrypoint such as ``flows/reduce_features.py:reduce_features``
    names, imported as a module of the installed package."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _schedules(specs: list[dict[str, Any]]) -> list[Any]:
    from prefect.schedules import Cron, Interval

    out = []
    for spec in specs:
        kwargs = {"timezone": spec.get("timezone"), "active": spec.get("active", True)}
        if "cron" in spec:
            out.append(Cron(spec["cron"], **kwargs))
        elif "interval" in spec:
            out.append(Interval(spec["interval"], **kwargs))
        else:
            raise ConfigError(f"schedule {spec} needs a cron or an interval")
    return out


def _triggers(deployment: str, specs: list[dict[str, Any]]) -> list[Any]:
    """prefect.yaml's ``triggers`` as Prefect's deployment triggers, named as ``prefect
    deploy`` names them (``<deployment>__automation_<i>``) unless they are named."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)
    return [
        adapter.validate_python({"name": f"{deployment}__automation_{i}", **spec})
        for i, spec in enumerate(specs, start=1)
    ]


def served_deployments(
    project: Path = PREFECT_YAML, config: dict[str, Any] | None = None
) -> list[Any]:
    """Runner deployments for every deployment in ``project`` (a prefect.yaml), with
    ``config`` as the ``config`` parameter of those that take one, when given."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType

    if not project.is_file():
        raise ConfigError(f"no prefect.yaml at {project}; pass --file")
    spec = yaml.safe_load(project.read_text()) or {}
    out = []
    for deployment in spec.get("deployments", []):
        name = deployment["name"]
        flow = _flow(deployment["entrypoint"])
        parameters = dict(deployment.get("parameters") or {})
        if config is not None and "config" in flow.parameters.properties:
            parameters["config"] = config
        limit = deployment.get("concurrency_limit")
        out.append(
            flow.to_deployment(
                name=name,
                description=deployment.get("description"),
                tags=deployment.get("tags"),
                parameters=parameters,
                schedules=_schedules(deployment.get("schedules") or []),
                triggers=_triggers(name, deployment.get("triggers") or []),
                concurrency_limit=(
                    ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit
                ),
                # runs import the installed package, from whatever folder this serves in
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def deployment_environment(project: Path = PREFECT_YAML) -> dict[str, str]:
    """The environment prefect.yaml gives its deployments' runs (the work pools' job
    variables), which served runs, started by this process, inherit from it."""
    spec = yaml.safe_load(project.read_text()) or {}
    env: dict[str, str] = {}
    for deployment in spec.get("deployments", []):
        pool = deployment.get("work_pool") or {}
        env |= {k: str(v) for k, v in ((pool.get("job_variables") or {}).get("env") or {}).items()}
    return env


def serve(project: Path = PREFECT_YAML, config: dict[str, Any] | None = None) -> None:
    """Register and serve the deployments until interrupted (their schedules are paused when
    this process stops)."""
    from prefect import serve as prefect_serve

    deployments = served_deployments(project, config)
    for key, value in deployment_environment(project).items():
        os.environ.setdefault(key, value)
    prefect_serve(*deployments)
