"""The main flow end to end on the digits: real Prefect server, MLflow on SQLite, Iceberg."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ae_models.preprocessing.tensor_column import to_wide
from feature_store import read_features
from flows.reduce_features import reduce_features
from stores import resolve_stores
from tasks.config import ConfigError, build_config
from tasks.registry import compare_versions, list_registered, promote_manually, registry_client
from tests.services import free_port, stop, wait_http

pytestmark = pytest.mark.slow


def config(home, epochs: int):
    return build_config(
        {
            "home": str(home),
            "model": {"code_size": 8},
            "train": {"epochs": epochs, "batch_size": 64, "patience": 0, "lr": 3e-3},
        }
    )


@pytest.fixture(scope="module")
def two_runs(prefect_server, tmp_path_factory):
    """Two runs on the same data: a short one (long enough to beat the trivial
    reconstruction, so it can be champion), then a longer (better) one."""
    home = tmp_path_factory.mktemp("two-runs")
    first = reduce_features(config(home, epochs=14))
    second = reduce_features(config(home, epochs=25))
    return home, first, second


def test_feature_table_after_two_runs(two_runs) -> None:
    home, first, second = two_runs
    assert (first.model_version, second.model_version) == (1, 2)
    assert first.rows_ingested == 1797 and first.rows_written == 1797
    assert second.test_mse < first.test_mse

    v1 = read_features("digits", 1, home=home)
    v2 = read_features("digits", 2, home=home)
    assert len(v1) == len(v2) == 1797
    assert not v1["entity_id"].duplicated().any() and not v2["entity_id"].duplicated().any()
    assert len(read_features("digits", None, home=home)) == 2 * 1797

    expected = [
        "entity_id",
        "event_timestamp",
        *[f"z_{i}" for i in range(8)],
        "recon_error",
        "anomaly_score",
        "is_anomaly",
        "top_columns",
        "model_name",
        "model_version",
        "run_id",
        "scored_at",
    ]
    assert list(v2.columns) == expected
    assert v2["z_0"].dtype == np.float32 and v2["recon_error"].dtype == np.float32
    assert v2["is_anomaly"].dtype == bool and v2["model_version"].dtype == np.int64
    assert np.isfinite(v2[[f"z_{i}" for i in range(8)] + ["recon_error"]].to_numpy()).all()
    assert set(v2["run_id"]) == {second.run_id}
    assert str(v2["event_timestamp"].dtype) == "datetime64[us, UTC]"
    # the threshold is the training-score quantile, so a small share is flagged
    assert 0 < v2["is_anomaly"].sum() < 0.05 * len(v2)
    # calibrated scores: the share of training rows scoring lower, so monotone in the score
    p = v2.sort_values("recon_error")["anomaly_score"].to_numpy()
    assert p.min() >= 0 and p.max() <= 1 and (np.diff(p) >= 0).all()
    assert abs(float(np.median(p)) - 0.5) < 0.1  # most rows here were training rows
    assert v2["top_columns"].isna().all()  # pixels: no per-column explanation by default


def test_downstream_classifier_reads_the_feature_table(two_runs) -> None:
    import mlflow

    from flows.train_downstream import train_downstream_flow

    home, _, _ = two_runs
    report = train_downstream_flow(config(home, epochs=25))
    assert report.model_version == 2 and report.code_size == 8
    assert list(report.accuracy) == ["latent codes", "normalized features", "PCA (8 components)"]
    assert report.test_rows > 250 and report.train_rows > 1000
    assert report.accuracy["normalized features"] > 0.9
    assert report.accuracy["latent codes"] > 0.5  # chance is 0.1; 25 epochs is a short run
    assert report.accuracy["PCA (8 components)"] > 0.75
    st = resolve_stores(home)
    run = mlflow.MlflowClient(st.tracking_uri).get_run(report.run_id)
    assert run.data.metrics["accuracy_latent"] == pytest.approx(report.accuracy["latent codes"])
    assert run.data.tags["aepipe.kind"] == "downstream"
    assert "latent codes" in report.to_text()


def test_better_challenger_is_promoted_and_recorded(two_runs) -> None:
    import mlflow

    home, first, second = two_runs
    st = resolve_stores(home)
    assert first.aliases == ["champion"] and second.aliases == ["champion"]
    assert set(read_features("digits", home=home)["model_version"]) == {2}
    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    mv = client.get_model_version_by_alias("aepipe-digits", "champion")
    assert int(mv.version) == 2
    assert mv.tags["promotion.decision"] == "promoted"
    assert mv.tags["promotion.metric"] == "eval_mse"
    assert mv.tags["promotion.champion_version"] == "1"
    assert float(mv.tags["promotion.challenger_value"]) < float(mv.tags["promotion.champion_value"])
    assert "beats champion's" in mv.tags["promotion.reason"]
    run = client.get_run(second.run_id)
    assert run.data.params["train.epochs"] == "25"
    assert run.data.metrics["test_mse"] == pytest.approx(second.test_mse)
    assert run.data.metrics["codes_logreg_accuracy"] > 0.5  # digits have labels
    assert "eval_mse" in run.data.metrics and "codes_5nn_accuracy" in run.data.metrics
    assert run.data.tags["aepipe.precision"] in ("fp32", "bf16")
    assert len(client.get_metric_history(second.run_id, "val_loss")) == 25
    dataset = run.inputs.dataset_inputs[0].dataset  # the ingested table, not an example
    assert dataset.name == "digits" and json.loads(dataset.source) == {"uri": "digits"}
    assert json.loads(dataset.profile)["num_rows"] == 1797
    columns = json.loads(dataset.schema)["mlflow_colspec"]
    assert len(columns) == 65 and columns[0] == {
        "type": "string",
        "name": "entity_id",
        "required": False,  # predict numbers rows without one
    }
    plots = {a.path for a in client.list_artifacts(second.run_id, "plots")}
    assert plots == {
        f"plots/{n}.png"
        for n in (
            "loss_curves",
            "code_activations",
            "code_projection",
            "recon_scores",
            "reconstructions",
        )
    }


BLOCK_PIPELINE = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name.split('.')[0] in ('tasks', 'flows', 'feature_store', 'stores', 'aepipe'):\n"
    "            raise ImportError('the served model imported ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def test_champion_pyfunc_in_a_fresh_process_matches_the_table(two_runs, tmp_path) -> None:
    """The served model carries the network and its preprocessing (ae_models) and nothing of
    the pipeline: it loads and predicts in a process where importing the pipeline fails."""
    home, _, _ = two_runs
    st = resolve_stores(home)
    raw_path = next((st.data_dir / "digits").glob("*/raw.parquet"))
    rows = tmp_path / "rows.parquet"
    table = pq.read_table(raw_path).slice(0, 50).drop_columns(["event_timestamp", "label"])
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    table = to_wide(table, names)  # the served model takes a column per pixel, as users send
    pq.write_table(table, rows)
    script = BLOCK_PIPELINE + (
        "import json, sys, mlflow, pandas as pd;"
        f"mlflow.set_tracking_uri({st.tracking_uri!r});"
        "m = mlflow.pyfunc.load_model('models:/aepipe-digits@champion');"
        f"out = m.predict(pd.read_parquet({str(rows)!r}));"
        "print(json.dumps({'ids': out['entity_id'].tolist(), 'z0': out['z_0'].tolist(),"
        " 'err': out['recon_error'].tolist()}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    feats = read_features("digits", 2, home=home).set_index("entity_id").loc[got["ids"]]
    assert np.allclose(got["z0"], feats["z_0"].to_numpy(), atol=1e-5)
    assert np.allclose(got["err"], feats["recon_error"].to_numpy(), atol=1e-6)
    import mlflow

    mlflow.set_tracking_uri(st.tracking_uri)
    code = mlflow.artifacts.download_artifacts(
        "models:/aepipe-digits@champion", dst_path=str(tmp_path)
    )
    assert sorted(p.name for p in (Path(code) / "code").iterdir()) == ["ae_models"]


def invoke(url: str, data: bytes) -> tuple[int, dict]:
    """POST ``data`` (JSON) to a scoring server's /invocations: the status and the answer."""
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_raw(port: int, body: bytes | Iterator[bytes], headers: dict[str, str]) -> int:
    """POST ``body`` to /invocations with exactly ``headers`` (JSON); the answer's status."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", "/invocations")
        for key, value in {"Content-Type": "application/json", **headers}.items():
            conn.putheader(key, value)
        conn.endheaders()
        if isinstance(body, bytes):
            conn.send(body)
        else:
            for chunk in body:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        return conn.getresponse().status
    finally:
        conn.close()


def test_mlflow_models_serve_answers_like_the_feature_table(two_runs, tmp_path) -> None:
    """Issue 21.1: the README's `mlflow models serve` on the champion answers the logged
    serving example with the feature table's codes and scores; a missing column is a 400
    that names it; rows without an entity id are numbered."""
    import mlflow

    home, _, _ = two_runs
    st = resolve_stores(home)
    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    champion = int(client.get_model_version_by_alias("aepipe-digits", "champion").version)
    model = Path(
        mlflow.artifacts.download_artifacts(
            "models:/aepipe-digits@champion", dst_path=str(tmp_path), tracking_uri=st.tracking_uri
        )
    )
    pins = (model / "requirements.txt").read_text().split()
    assert pins[0].startswith("mlflow==") and all(re.fullmatch(r"[\w-]+==[\d.]+", p) for p in pins)
    assert "torch==" + metadata.version("torch").split("+")[0] in pins
    example = json.loads((model / "serving_input_example.json").read_text())

    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server runs the venv's uvicorn
    env = os.environ | {
        "MLFLOW_TRACKING_URI": st.tracking_uri,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    log = tmp_path / "serve.log"
    serve = ["models", "serve", "-m", "models:/aepipe-digits@champion", "--env-manager", "local"]
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(bin_dir) / "mlflow"), *serve, "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def post(body: dict) -> tuple[int, dict]:
        return invoke(url, json.dumps(body).encode())

    try:
        wait_http(f"{url}/ping", server, log)
        status, answer = post(example)
        assert status == 200, answer
        got = pd.DataFrame(answer["predictions"]).set_index("entity_id")
        feats = read_features("digits", champion, home=home).set_index("entity_id").loc[got.index]
        codes = [c for c in feats.columns if c.startswith("z_")]
        assert codes and list(got.columns[: len(codes)]) == codes
        assert np.allclose(got[codes].to_numpy(), feats[codes].to_numpy(), atol=1e-5)
        assert np.allclose(got["recon_error"], feats["recon_error"], atol=1e-6)

        split = example["dataframe_split"]
        at = split["columns"].index("pixel_3_3")
        missing = {"dataframe_split": {
            "columns": [c for i, c in enumerate(split["columns"]) if i != at],
            "data": [[v for i, v in enumerate(row) if i != at] for row in split["data"]],
        }}  # fmt: skip
        status, answer = post(missing)
        assert status == 400 and "missing inputs ['pixel_3_3']" in answer["message"]

        no_ids = {"dataframe_split": {
            "columns": split["columns"][1:], "data": [row[1:] for row in split["data"]],
        }}  # fmt: skip
        assert split["columns"][0] == "entity_id"
        status, answer = post(no_ids)
        assert status == 200, answer
        assert [r["entity_id"] for r in answer["predictions"]] == ["0", "1", "2", "3", "4"]
    finally:
        stop(server)


def test_aepipe_models_serve_is_bounded(two_runs, tmp_path) -> None:
    """Issue 47.6: `mlflow models serve` parsed a 200 MB body, scored 1M rows in one request
    (1.55 GB), answered `Infinity` with 200 and `is_anomaly: false`, and JSON nested 100k deep
    with a 500. `aepipe models serve` answers the same requests as MLflow's server within
    bounds: 413 past the body cap, 400 past the row cap, to infinite values and to JSON too
    deep, before the model scores anything (a table's float columns: see
    test_source_shapes::test_served_rows_with_infinite_or_huge_values)."""
    home, _, _ = two_runs
    st = resolve_stores(home)
    client = registry_client(st)
    version = client.get_model_version_by_alias("aepipe-digits", "champion")
    model = Path(client.download_artifacts(version.run_id, "model", str(tmp_path)))
    example = json.loads((model / "serving_input_example.json").read_text())
    port = free_port()
    cli = str(Path(sys.executable).with_name("aepipe"))
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [cli, "models", "serve", "aepipe-digits", "--home", str(home), "--port", str(port),
             "--max-body-mb", "0.25", "--max-rows", "50"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", server, log)
        status, answer = invoke(url, json.dumps(example).encode())
        assert status == 200 and len(answer["predictions"]) == 5, answer
        split = example["dataframe_split"]
        rows = {"dataframe_split": {**split, "data": split["data"] * 11}}  # 55 rows
        status, answer = invoke(url, json.dumps(rows).encode())
        assert status == 400 and "55 rows in one request" in answer["message"], answer
        # past the cap, declared or streamed: answered before the rest is read (a client
        # still sending may see the connection close, so these send no more than the cap)
        assert post_raw(port, b"[]", {"Content-Length": str(300_000)}) == 413
        assert post_raw(port, iter([b"[" * 262_145]), {"Transfer-Encoding": "chunked"}) == 413
        status, answer = invoke(url, b"[" * 100_000 + b"]" * 100_000)
        assert status == 400 and answer["message"] == "JSON nested too deeply", answer
        at = split["columns"].index("pixel_3_3")
        infinite = [list(r) for r in split["data"]]
        infinite[2][at] = float("inf")
        body = json.dumps({"dataframe_split": {**split, "data": infinite}}).encode()
        status, answer = invoke(url, body)  # (pixels are integers: MLflow's schema refuses)
        assert status == 400 and "pixel_3_3" in answer["message"], answer
    finally:
        stop(server)


def test_reads_resolve_aliases_from_the_table_or_the_registry(two_runs) -> None:
    """The table records the registry's aliases with each commit; a resolver asks the
    registry itself; an alias nobody holds is named."""
    import mlflow

    from feature_store import FeatureStoreError
    from tasks.registry import alias_resolver

    home, _, _ = two_runs
    st = resolve_stores(home)
    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    champion = int(client.get_model_version_by_alias("aepipe-digits", "champion").version)
    resolve = alias_resolver(st)
    assert set(read_features("digits", home=home)["model_version"]) == {champion}
    asked = read_features("digits", "champion", home=home, resolve=resolve)
    assert set(asked["model_version"]) == {champion}
    with pytest.raises(FeatureStoreError, match="has no version with alias 'nope'"):
        read_features("digits", "nope", home=home, resolve=resolve)


def test_models_list_compare_and_manual_promotion(two_runs, capsys) -> None:
    from aepipe.cli import main

    home, _, _ = two_runs
    st = resolve_stores(home)
    listed = list_registered(st)
    assert listed.to_dict("records") == [
        {"model": "aepipe-digits", "versions": 2, "champion": "2", "challenger": ""}
    ]
    table = compare_versions("aepipe-digits", st)
    assert table["version"].tolist() == [1, 2]
    assert table["aliases"].tolist() == ["", "champion"]
    assert table.loc[1, "eval_mse"] < table.loc[0, "eval_mse"]

    message = promote_manually("aepipe-digits", 1, st, note="rollback drill")
    assert message == "aepipe-digits version 1 is now the champion (was 2)"
    assert set(read_features("digits", home=home)["model_version"]) == {1}
    table = compare_versions("aepipe-digits", st)
    assert table.loc[0, "decision"] == "promoted (manual)"
    assert table.loc[0, "reason"] == (
        "manual promotion: rollback drill (the run decided: promoted, first version: no "
        "champion yet)"
    )
    tags = registry_client(st).get_model_version("aepipe-digits", "1").tags
    assert tags["promotion.decision"] == "promoted"  # the run's decision, kept
    assert tags["promotion.manual.decision"] == "promoted (manual)"
    assert tags["promotion.manual.champion_version"] == "2"
    assert main(["models", "promote", "aepipe-digits", "2", "--home", str(home)]) == 0
    assert main(["models", "compare", "aepipe-digits", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "now the champion (was 1)" in out and "champion" in out

    with pytest.raises(ConfigError, match=r"unknown registered model 'nope'; available: "):
        compare_versions("nope", st)
    with pytest.raises(ConfigError, match=r"has no version '7'; versions: \[1, 2\]"):
        promote_manually("aepipe-digits", "7", st)
    assert main(["models", "promote", "aepipe-digits", "9", "--home", str(home)]) == 2
    assert "has no version '9'" in capsys.readouterr().err


def test_worse_model_is_not_promoted(prefect_server, home) -> None:
    good = reduce_features(config(home, epochs=25))
    worse = reduce_features(config(home, epochs=14))  # learned, less than good
    assert good.aliases == ["champion"]
    assert worse.aliases == ["challenger"] and "does not beat" in worse.promotion
    assert set(read_features("digits", home=home)["model_version"]) == {good.model_version}


def test_first_version_that_learned_nothing_is_not_crowned(prefect_server, home) -> None:
    """Issue 17.5: one epoch on the digits reconstructs worse than each pixel's mean; even
    as the first version it stays challenger, and the summary says so loudly."""
    nothing = reduce_features(config(home, epochs=1))
    assert nothing.aliases == ["challenger"]
    assert nothing.promotion.startswith("not promoted: it learned nothing (test BCE")
    assert "WARNING            the model reconstructs no better" in nothing.to_text()
    # no champion to read by default: the read-it lines name this run's version
    assert "read_features('digits', 1, home=" in nothing.to_text()
    assert len(read_features("digits", 1, home=home)) == 1797
    assert nothing.quality["recon_vs_baseline"] >= 1.0


def test_image_partitions_decode_in_forked_processes_under_prefect(
    prefect_server, home, tmp_path, monkeypatch
) -> None:
    """Big image partitions fork decoder processes from inside a Prefect task thread; the
    run completes with every image accounted for."""
    from PIL import Image

    from tasks.io import arrays as readers

    pools = []

    def spy(n_files, workers):
        pool = real(n_files, workers)
        pools.append(pool[1])
        return pool

    real = readers._decode_pool
    monkeypatch.setattr(readers, "_decode_pool", spy)
    monkeypatch.setattr(readers, "PROCESS_DECODE_MIN", 10)
    rng = np.random.default_rng(0)
    for i in range(40):
        folder = tmp_path / "imgs" / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "imgs" / "0" / "broken.png").write_bytes(b"\x89PNG cut")
    cfg = build_config(
        {
            "home": str(home),
            "dataset": "tiny_images",
            "source": {"path": str(tmp_path / "imgs"), "max_quarantine_fraction": 0.05},
            "model": {"code_size": 4},
            "train": {"epochs": 2, "batch_size": 16, "patience": 0},
        }
    )
    summary = reduce_features(cfg)
    assert pools and min(pools) >= 2  # decoded by processes, not in the thread
    assert (summary.rows_ingested, summary.rows_quarantined) == (40, 1)
    assert len(read_features("tiny_images", home=home)) == 40


def test_unknown_promotion_metric_registers_nothing(prefect_server, home) -> None:
    import mlflow

    cfg = build_config(
        {
            "home": str(home),
            "model": {"code_size": 8},
            "train": {"epochs": 1},
            "promotion_metric": "nonsense",
        }
    )
    with pytest.raises(ConfigError, match="promotion_metric 'nonsense' is not measured"):
        reduce_features(cfg)
    st = resolve_stores(home)
    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    assert client.search_registered_models() == []


def test_run_summary_artifact_links_the_pictures(two_runs) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, _, second = two_runs
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["aepipe-digits-run"]))
        )
    # other tests on the same Prefect server write artifacts under this key too
    ours = [a for a in artifacts if second.run_id in (a.data or "")]
    assert len(ours) == 1, "no run summary artifact for the second run"
    assert "## Pictures" in ours[0].data and "code_projection.png" in ours[0].data
    assert ours[0].type == "markdown"
    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["aepipe-digits-summary"]))
        )
    ours = [a for a in tables if second.run_id in str(a.data)]
    assert len(ours) == 1 and ours[0].type == "table"
    assert "feature table rows" in str(ours[0].data) and "1797" in str(ours[0].data)
