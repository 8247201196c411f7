"""Security: models load without running pickled code, configs cannot write outside the
stores, and credentials never reach logs, MLflow params or Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ae_models
from ae_models import AutoencoderReducer
from tests.services import free_port, start_mlflow, stop


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("loader", ["load_model", "estimator"])
def test_a_crafted_pickle_in_a_model_folder_is_refused_not_run(tmp_path, loader) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    if loader == "estimator":
        x = np.random.default_rng(0).random((40, 6)).astype(np.float32)
        AutoencoderReducer(epochs=1, code_size=2).fit(x).save(folder)
    else:
        ae_models.save_model(ae_models.create_model("deep", input_dim=6, code_size=2), folder)
    torch.save({"encoder.0.weight": _Payload(marker)}, folder / "weights.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        if loader == "estimator":
            AutoencoderReducer.load(folder)
        else:
            ae_models.load_model(folder)
    assert not marker.exists()


def test_a_config_cannot_write_outside_the_stores(aepipe_main, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    result = aepipe_main(
        "run", "--source", "digits", "--set", f"train.checkpoint_dir={outside}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    home = (tmp_path / ".aepipe").resolve()
    assert result.stderr.strip() == (
        f"aepipe: error: train.checkpoint_dir '{outside}' resolves to {outside}, outside the "
        f"data store {home}; aepipe writes only inside its stores (set AEPIPE_HOME or "
        "AEPIPE_DATA to move them)"
    )
    sneaky = aepipe_main(
        "run", "--source", "digits", "--set", "train.checkpoint_dir=../../x", cwd=tmp_path
    )
    assert sneaky.returncode == 2 and "outside the data store" in sneaky.stderr
    named = aepipe_main("run", "--source", "digits", "--set", "dataset=../evil", cwd=tmp_path)
    assert named.returncode == 2 and "dataset" in named.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, inside or outside


@pytest.mark.slow
def test_credentials_never_reach_logs_params_or_artifacts(aepipe_cli, tmp_path) -> None:
    """A real MLflow tracking server reached with a user and a (fake) password in the URI:
    the run works, and the secret appears in no output, log, MLflow param or tag, Prefect
    artifact or database written here."""
    secret = "fake-s3cret-c0ffee"
    port = free_port()
    server_dir = tmp_path / "server"
    server = start_mlflow(server_dir, port)
    try:
        uri = f"http://aepipe-bot:{secret}@127.0.0.1:{port}"
        work = tmp_path / "work"
        work.mkdir()
        result = aepipe_cli(
            "run", "--source", "digits", "--epochs", "2", cwd=work,
            env={"AEPIPE_TRACKING_URI": uri},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert f"open http://***@127.0.0.1:{port} in a browser" in result.stdout

        import mlflow

        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs, "the run was not tracked"
        for run in runs:
            for value in [*run.data.params.values(), *run.data.tags.values()]:
                assert secret not in value
        seen = result.stdout + result.stderr
        assert secret not in seen
        # the session's Prefect server keeps the run's parameters, logs and artifacts
        from prefect.settings import get_current_settings

        database = get_current_settings().server.database.connection_url.get_secret_value()
        prefect_db = Path(database.split("///", 1)[1])
        prefect_files = list(prefect_db.parent.glob(prefect_db.name + "*"))  # -wal, -shm too
        assert prefect_files
        for path in list(work.rglob("*")) + list(server_dir.rglob("*")) + prefect_files:
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    finally:
        stop(server)


def test_a_database_tracking_uri_never_shows_its_password(tmp_path, monkeypatch) -> None:
    """A Postgres tracking store with a password in its URI: the UI command names the
    setting (``$AEPIPE_TRACKING_URI``, which the user's shell holds) instead of quoting the
    password, and the UI address holds no credentials either."""
    from stores import resolve_stores

    secret = "fake-pa55word-7e3"
    monkeypatch.setenv("AEPIPE_TRACKING_URI", f"postgresql+psycopg2://bot:{secret}@db:5432/ml")
    stores = resolve_stores(tmp_path)
    shown = [*stores.ui_commands().values(), stores.mlflow_ui_url]
    assert all(secret not in line for line in shown), shown
    assert '--backend-store-uri "$AEPIPE_TRACKING_URI"' in stores.ui_commands()["mlflow"]


class _Planted:
    """What an attacker pickles into a cached result: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_a_cached_result_is_read_as_json_whatever_the_file_claims(prefect_server, tmp_path) -> None:
    """A result file under ``results/`` whose record names the pickle serializer (or a JSON
    one with another object decoder) is never deserialized: the cache lookup misses, the task
    runs again and writes a JSON record over it; the planted command never runs."""
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import JSONSerializer, PickleSerializer

    from flows.ingest import ingest_partitions
    from stores import resolve_stores
    from tasks.config import build_config

    home, marker = tmp_path / "home", tmp_path / "pwned"
    cfg = build_config({"home": str(home), "source": {"path": "digits"}})
    stores = resolve_stores(home)
    first = ingest_partitions(cfg, stores)
    records = [p for p in (home / "results").iterdir() if p.is_file()]
    assert records
    hostile = [
        PickleSerializer(),
        JSONSerializer(object_decoder="tests.reliability.test_security._decoder_that_runs"),
    ]
    for path, serializer in zip(records, hostile * len(records), strict=False):
        metadata = ResultRecordMetadata(serializer=serializer, storage_key=str(path))
        payload = _Planted(f"touch {marker}") if serializer.type == "pickle" else {"x": 1}
        path.write_bytes(ResultRecord(metadata=metadata, result=payload).serialize())
    again = ingest_partitions(cfg, stores)
    assert not marker.exists() and not _DECODED, "a planted result record ran code"
    assert again.rows == first.rows == 1797
    for path in records:  # written again, as JSON
        assert b'"type":"json"' in path.read_bytes() and b"_decoder_that_runs" not in (
            path.read_bytes()
        )


_DECODED: list[object] = []


def _decoder_that_runs(value: object) -> object:
    """An object decoder a crafted JSON record names: any importable callable would do."""
    _DECODED.append(value)
    return value
