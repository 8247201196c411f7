"""Store settings from a Prefect Secret block (issue 21.3): what a block may hold, and what
a run does without one."""

from __future__ import annotations

import logging
import os

import pytest

from tasks.config import ConfigError, PipelineConfig
from tasks.credentials import ALLOWED_SETTINGS, ENV_SECRET_BLOCK, load_secret_block, run_stores


@pytest.fixture
def block(prefect_server, monkeypatch):
    """Save Secret blocks under test names; the settings they set are undone afterwards."""
    from prefect.blocks.system import Secret

    for key in (*ALLOWED_SETTINGS, ENV_SECRET_BLOCK):
        monkeypatch.delenv(key, raising=False)
    saved = []

    def save(name: str, value) -> str:
        Secret(value=value).save(name, overwrite=True)
        saved.append(name)
        return name

    yield save
    for name in saved:
        Secret.delete(name)


def test_a_runs_stores_come_from_the_named_block(block, tmp_path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv(ENV_SECRET_BLOCK, block("test-stores", {"AEPIPE_TRACKING_URI": uri}))
    monkeypatch.setenv("AEPIPE_TRACKING_URI", "sqlite:///worker-default.db")  # the block wins
    stores = run_stores(PipelineConfig(home=str(tmp_path / "home")))
    assert stores.tracking_uri == uri and os.environ["AEPIPE_TRACKING_URI"] == uri
    assert stores.catalog_uri == f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"


def test_without_a_block_name_or_a_block_nothing_changes(block, tmp_path, caplog) -> None:
    assert load_secret_block() == []  # AEPIPE_SECRET_BLOCK unset: Prefect is not asked
    with caplog.at_level(logging.INFO, logger="tasks.credentials"):
        assert load_secret_block("no-such-block") == []
    assert "no Secret block 'no-such-block'" in caplog.text
    stores = run_stores(PipelineConfig(home=str(tmp_path)))
    assert stores.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sqlite:///x.db", "must hold a JSON object of settings"),
        ({"AEPIPE_TRACKING_URL": "x"}, "sets ['AEPIPE_TRACKING_URL'], which aepipe does not"),
        ({"AWS_ACCESS_KEY_ID": 12}, "the values of ['AWS_ACCESS_KEY_ID'] must be strings"),
    ],
)
def test_a_malformed_block_is_one_clear_error_and_sets_nothing(block, value, message) -> None:
    name = block("test-bad-stores", value)
    with pytest.raises(ConfigError, match="Secret block 'test-bad-stores'") as err:
        load_secret_block(name)
    assert message in str(err.value)
    assert not any(key in os.environ for key in ALLOWED_SETTINGS)
