"""Where a flow's tasks run: the task runner a config asks for, and nested runs without
their own heartbeat. The flows (``flows/``) wire stages; how they are run lives here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.config import PipelineConfig
from tasks.errors import ConfigError


def map_with_progress(task: Any, args: tuple[Any, ...], *, key: str, description: str) -> list[Any]:
    """Map ``task`` over ``args`` on the flow's task runner, showing the share finished as a
    progress artifact; each result, or the exception of a task that failed."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    futures = task.map(*args)
    progress = create_progress_artifact(0.0, key=key, description=description)
    for finished, _ in enumerate(as_completed(futures), start=1):
        update_progress_artifact(progress, 100.0 * finished / len(futures))
    return [f.result(raise_on_failure=False) for f in futures]


def first_failure(results: list[Any], done: type, what: str) -> BaseException:
    """What a mapped stage raises when some of ``results`` are not ``done``: the first
    exception among them, or an error naming what came back instead (a task runner that
    lost a worker may hand back no exception at all; never a bare StopIteration)."""
    failed = [r for r in results if not isinstance(r, done)]
    for result in failed:
        if isinstance(result, BaseException):
            return result
    return RuntimeError(
        f"{len(failed)} {what}(s) of {len(results)} returned no result (the first: "
        f"{type(failed[0]).__name__ if failed else 'none'}); run it again"
    )


def task_runner_for(cfg: PipelineConfig) -> Any:
    """Threads by default (one per usable CPU); prefect-dask's DaskTaskRunner on a
    LocalCluster or at ``cfg.dask_address`` when ``cfg.task_runner`` is ``dask``."""
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"processes": True, "dashboard_address": None, "env": worker_env()}
        )
    from prefect.settings import get_current_settings
    from prefect.task_runners import ThreadPoolTaskRunner

    from ae_models.training.cpus import cap_arrow_threads, usable_cpus

    cap_arrow_threads()  # Arrow's pool too: the partitions read and write Parquet
    # Prefect's default is a thread per partition, all at once; as many as there are CPUs
    # this process may use, unless PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS says
    chosen = get_current_settings().tasks.runner.thread_pool_max_workers
    return ThreadPoolTaskRunner(max_workers=chosen or usable_cpus())


def worker_env() -> dict[str, str]:
    """Environment for local Dask workers: this run's Prefect API (the temporary server lives
    in this process, so workers would otherwise start servers of their own) and settings."""
    from prefect.client.orchestration import get_client

    env = {k: v for k, v in os.environ.items() if k.startswith(("PREFECT_", "AEPIPE_", "MLFLOW_"))}
    env["PREFECT_API_URL"] = str(get_client().api_url).rstrip("/")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


@contextmanager
def without_heartbeat() -> Iterator[None]:
    """Flow runs started inside have no heartbeat of their own.

    Prefect's flow engine joins its heartbeat thread when a flow run ends, and that thread
    sleeps in one-second steps: every subflow cost 1.1 to 3.3 s on a running server where
    its work took 0.14 s (measured with an empty subflow of two tasks). A nested run lives
    and dies with its parent's process, whose heartbeat already tells a crash."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def run_subflow(subflow: Any, cfg: PipelineConfig, *args: Any) -> Any:
    """Run ``subflow`` nested in the current flow run, on the task runner ``cfg`` asks for,
    without a heartbeat of its own (:func:`without_heartbeat`)."""
    with without_heartbeat():
        return subflow.with_options(task_runner=task_runner_for(cfg))(*args)


def retry_unless_config_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry what may pass (I/O), never a ConfigError, which
    only the user can fix, so a bad source fails at once instead of after the retries, nor a
    MemoryError, which the same input meets again (and retrying holds the memory longer)."""
    return not isinstance(getattr(state, "data", None), (ConfigError, MemoryError))


def io_task(name: str) -> Any:
    """Decorator making a Prefect task of a stage that touches I/O (sources, MLflow, the
    catalog): two retries after 1 s and 5 s, none for a ConfigError."""
    from prefect import task

    return task(
        name=name,
        retries=2,
        retry_delay_seconds=[1, 5],
        retry_condition_fn=retry_unless_config_error,
    )
