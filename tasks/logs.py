"""aepipe's own log lines in the Prefect UI: the loggers of ``ae_models``, ``feature_store``,
``tasks``, ``flows`` and ``stores`` send their records to the Prefect run they happen in,
as Prefect's ``PREFECT_LOGGING_EXTRA_LOGGERS`` would, but silently outside a run (the
estimator in a notebook, a benchmark), where Prefect's handler would warn on every line."""

from __future__ import annotations

import logging
from typing import Any

from prefect.logging.handlers import APILogHandler

AEPIPE_LOGGERS = ("ae_models", "feature_store", "tasks", "flows", "stores")


def run_logger(fallback: logging.Logger) -> Any:
    """The Prefect run's logger inside a flow or task run (its lines reach the UI and the
    run's log), else ``fallback``."""
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # outside a Prefect run: plain logging
        return fallback


class RunLogHandler(APILogHandler):
    """Prefect's API log handler, for records logged inside a flow or task run only."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def send_logs_to_prefect(level: int = logging.INFO) -> None:
    """Attach :class:`RunLogHandler` to aepipe's loggers (once per process) and let their
    records from ``level`` on through, so they reach the run's logs in the Prefect UI (and
    the terminal of a flow run, beside Prefect's own lines)."""
    for name in AEPIPE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, RunLogHandler) for h in logger.handlers):
            logger.addHandler(RunLogHandler(level=level))
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
