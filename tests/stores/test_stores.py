"""Where the stores are, and what a user is told to open (tests of :mod:`stores`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stores import resolve_stores


def test_links_and_ui_command_follow_where_the_mlflow_ui_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 40.7: report links name the MLflow UI the user runs, never a port of ours."""
    for var in ("AEPIPE_MLFLOW_UI", "AEPIPE_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    default = resolve_stores(tmp_path)
    assert default.mlflow_ui_url == "http://127.0.0.1:5000"
    assert default.ui_commands()["mlflow"].endswith("--port 5000")

    monkeypatch.setenv("AEPIPE_MLFLOW_UI", "http://127.0.0.1:5055/")
    moved = resolve_stores(tmp_path)
    assert moved.mlflow_ui_url == "http://127.0.0.1:5055"
    assert moved.ui_commands()["mlflow"].endswith("--port 5055")  # the same UI, started

    monkeypatch.setenv("AEPIPE_MLFLOW_UI", "https://bob:secret@mlflow.example.com")
    proxied = resolve_stores(tmp_path)
    assert proxied.mlflow_ui_url == "https://***@mlflow.example.com"
    assert proxied.ui_commands()["mlflow"] == "open https://***@mlflow.example.com in a browser"
    assert "secret" not in proxied.model_dump_json()

    monkeypatch.delenv("AEPIPE_MLFLOW_UI")
    monkeypatch.setenv("AEPIPE_TRACKING_URI", "http://127.0.0.1:5077")
    assert resolve_stores(tmp_path).mlflow_ui_url == "http://127.0.0.1:5077"
