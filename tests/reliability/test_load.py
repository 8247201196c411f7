"""Many runs at once (issue 22.1): the short version of ``benchmarks/load.py`` (2 ``aepipe run``
processes on two data sets, then 2 ``aepipe score`` processes on one table, each set started
together); ``python -m benchmarks.load`` runs the issue's 4 and 8 and prints their times."""

from __future__ import annotations

import os

import pytest

from benchmarks.load import run_load

pytestmark = pytest.mark.slow


def test_runs_at_once_all_land_and_every_row_once(prefect_server, tmp_path) -> None:
    """With the scoring lock one scoring appends the 500 new rows and the other finds none
    left; each first run makes its own MLflow experiment in the one fresh store."""
    from prefect.settings import get_current_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEPIPE_", "PREFECT_"))}
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    report = run_load(tmp_path, reduce_runs=2, score_runs=2, env=env)
    assert report.failures == []
    assert (report.rows_lost, report.rows_twice, report.mixed_slices) == (0, 0, 0)
    assert len(report.reduce_seconds) == 2 and len(report.score_seconds) == 2
