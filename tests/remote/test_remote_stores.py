"""Feature tables on remote stores, for real: a PostgreSQL catalog (the ``pgserver`` package's
server) and an S3 warehouse (``moto`` in server mode, checking credentials), written from one
home and read from others; and each way a remote store can be wrong, reported in one line
before any work."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from stores import resolve_stores
from tests.feature_store.test_write import make_batch
from tests.services import create_database, free_port, postgres, start_moto, stop

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
BUCKET = "aepipe-features"


@dataclass(frozen=True)
class Remote:
    """The remote stores' settings: what a user's shell exports to use them."""

    env: dict[str, str]  # AWS_* for the S3 server, with the keys of a real user of it
    catalog: str  # SQLAlchemy URI of an empty PostgreSQL database
    root: Path  # where the servers keep their files
    postgres: str  # SQLAlchemy URI of the PostgreSQL server's default database

    def use(self, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
        """Point this process at the remote stores (and ``extra`` settings)."""
        settings = {
            **self.env,
            "AEPIPE_CATALOG": self.catalog,
            "AEPIPE_WAREHOUSE": f"s3://{BUCKET}/warehouse",
            **extra,
        }
        for key, value in settings.items():
            monkeypatch.setenv(key, value)


def s3_user(endpoint: str) -> dict[str, str]:
    """On a fresh S3 server: the bucket, and a user allowed to use it; the ``AWS_*``
    settings that reach the server with that user's keys (4 requests)."""
    import boto3

    setup = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "setup",
        "aws_secret_access_key": "setup",
    }
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="aepipe")
    allow = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="aepipe", PolicyName="s3", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="aepipe")["AccessKey"]
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """A PostgreSQL server and an S3 server with a bucket and a user's keys. This one does
    not check the keys: MLflow's downloads through presigned URLs stalled on moto's checking
    of them; a checking server is started for the wrong-credentials case below."""
    root = tmp_path_factory.mktemp("remote")
    port = free_port()
    s3 = start_moto(root / "s3", port)
    try:
        env = s3_user(f"http://127.0.0.1:{port}")
        with postgres(root / "pg") as server:
            yield Remote(env, create_database(server, "catalog"), root, server)
    finally:
        stop(s3)


def test_feature_tables_on_postgres_and_s3_are_read_from_any_home(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written from one home, replaced, appended to and kept up; read (current, time travel,
    point in time) from a second home after the first is gone: nothing a later reader needs
    was on the writer's disk."""
    from feature_store import (
        get_historical_features,
        maintain_table,
        read_features,
        table_history,
        write_features,
    )

    remote.use(monkeypatch)
    first, second = resolve_stores(tmp_path / "one"), resolve_stores(tmp_path / "two")
    assert first.catalog_uri == remote.catalog and second.warehouse.startswith("s3://")
    kw = {"code_size": 2, "model_name": "m", "stores": first}
    write_features("remote_t", make_batch(5, 2, 1), model_version=1, **kw)
    written = datetime.now(UTC)
    time.sleep(0.05)
    day = datetime(2026, 11, 2, tzinfo=UTC)
    write_features("remote_t", make_batch(4, 2, 1, when=day), model_version=1, **kw)  # replaced
    later = make_batch(3, 2, 1, start=10, when=day + timedelta(hours=1))
    write_features("remote_t", later, model_version=1, mode="append", **kw)
    assert not first.home.exists()  # every store is remote: nothing was kept locally
    shutil.rmtree(first.home, ignore_errors=True)

    assert len(read_features("remote_t", 1, home=second)) == 7
    assert len(read_features("remote_t", 1, as_of=written, home=second)) == 5
    assert list(table_history("remote_t", second)["mode"]) == ["replace", "replace", "append"]
    at = [day + timedelta(minutes=1)] * 2
    entities = pd.DataFrame({"entity_id": ["0", "10"], "event_timestamp": at})
    joined = get_historical_features(entities, "remote_t", 1, home=second)
    assert joined["z_0"].notna().tolist() == [True, False]  # 10's features came later
    done = maintain_table("remote_t", home=second, retain=timedelta(0))
    assert done.expired == 2 and done.deleted >= 1  # the replaced file, on S3
    assert len(read_features("remote_t", 1, home=second)) == 7


def _check(tmp_path: Path) -> str:
    """check_stores on a fresh home: the one-line error it raises."""
    from tasks.config import ConfigError, build_config
    from tasks.validate import check_stores

    cfg = build_config({"home": str(tmp_path / "home")})
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_stores(cfg, resolve_stores(cfg.home))
    assert time.monotonic() - started < 30  # bounded: never a hang on a dead store
    assert not (tmp_path / "home").exists()  # and nothing was made
    message = str(err.value)
    assert "\n" not in message
    return message


def test_each_wrong_remote_store_is_one_line_before_any_work(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.use(monkeypatch)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    message = _check(tmp_path)
    assert f"warehouse s3://{BUCKET}/warehouse" in message
    assert f"the endpoint {dead} cannot be reached" in message

    port = free_port()
    checking = start_moto(tmp_path / "s3", port, auth_after=4)  # then it checks every key
    try:
        real = s3_user(f"http://127.0.0.1:{port}")
        remote.use(monkeypatch, **real)
        from stores.remote import check_object_store

        check_object_store(f"s3://{BUCKET}/warehouse", "warehouse")  # the real keys work
        remote.use(monkeypatch, **{**real, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
        message = _check(tmp_path)
        assert "credentials were refused" in message and "not-the-secret" not in message
    finally:
        stop(checking)

    remote.use(monkeypatch, AEPIPE_WAREHOUSE="s3://no-such-bucket/features")
    assert "bucket 'no-such-bucket' does not exist" in _check(tmp_path)
    remote.use(monkeypatch, AEPIPE_DATA="s3://no-data-bucket/aepipe")
    message = _check(tmp_path)
    assert message.startswith("the data store s3://no-data-bucket/aepipe cannot be used")
    assert "bucket 'no-data-bucket' does not exist" in message
    monkeypatch.delenv("AEPIPE_DATA")

    refusing = f"postgresql+psycopg2://aepipe:hunter2@127.0.0.1:{free_port()}/catalog"
    remote.use(monkeypatch, AEPIPE_CATALOG=refusing)
    message = _check(tmp_path)
    assert message.startswith("the Iceberg catalog database postgresql+psycopg2://***@127.0.0.1")
    assert "refuses connections" in message and "hunter2" not in message

    remote.use(monkeypatch, AEPIPE_CATALOG="postgresql+nosuchdriver://u@127.0.0.1/catalog")
    assert "pip install 'aepipe[scale]'" in _check(tmp_path)
    monkeypatch.setenv("AEPIPE_CATALOG", remote.catalog)

    # issue 47.9: a tracking store on the real PostgreSQL naming a database that is not there
    # (MLflow retried it for over a minute, after the run had started)
    missing = remote.postgres.rsplit("/", 1)[0] + "/no_such_mlflow"
    remote.use(monkeypatch, AEPIPE_TRACKING_URI=missing)
    message = _check(tmp_path)
    assert message.startswith("the MLflow tracking store database postgresql")
    assert 'database "no_such_mlflow" does not exist' in message
    monkeypatch.delenv("AEPIPE_TRACKING_URI")


def test_a_run_with_every_store_remote_is_scored_and_read_from_empty_homes(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Issue 20.5: `reduce-features` with every store remote (Prefect: a server on PostgreSQL;
    MLflow: a server on PostgreSQL with its artifacts on S3; the catalog on PostgreSQL; the
    warehouse and AEPIPE_DATA on S3) and its partitions on a Dask cluster whose two workers
    each have a home of their own; one worker is killed during the partitioned write and
    the run still completes, each row once. The run's home is deleted; `score-features` from
    a second, empty home appends the source's new rows; a third reads them."""
    import threading

    import boto3
    import sqlalchemy as sa
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from feature_store import read_features
    from flows.reduce_features import reduce_features
    from flows.score_features import score_features
    from tests.flows.test_score_features import config, sales
    from tests.services import prefect_env, start_dask, start_mlflow, start_prefect

    engine = sa.create_engine(remote.postgres, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        trgm = conn.execute(
            sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
        ).first()
    engine.dispose()
    if trgm is None:
        pytest.skip("Prefect's server needs PostgreSQL's pg_trgm, which this server lacks")
    port, prefect_port = free_port(), free_port()
    orchestration = create_database(remote.postgres, "prefect").replace(
        "postgresql+psycopg2://", "postgresql+asyncpg://", 1
    )
    env = prefect_env(tmp_path / "prefect", prefect_port)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = orchestration
    stores_env = {
        **remote.env,
        "AEPIPE_CATALOG": remote.catalog,
        "AEPIPE_WAREHOUSE": f"s3://{BUCKET}/warehouse",
        "AEPIPE_DATA": f"s3://{BUCKET}/aepipe",
        "AEPIPE_TRACKING_URI": f"http://127.0.0.1:{port}",
    }
    # partitions of 20 rows: the write is 15 tasks, so a worker dies in the middle of it
    monkeypatch.setattr("tasks.normalize.NORMALIZE_BATCH", 20)
    with contextlib.ExitStack() as servers:
        mlflow = start_mlflow(
            remote.root / "mlflow",
            port,
            create_database(remote.postgres, "mlflow"),
            f"s3://{BUCKET}/mlflow",
            env={**os.environ, **remote.env},
        )
        servers.callback(stop, mlflow)
        servers.callback(stop, start_prefect(env, tmp_path / "prefect.log"))
        servers.enter_context(temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}))
        workers = [tmp_path / "worker-a", tmp_path / "worker-b"]
        dask = start_dask(tmp_path / "dask", workers, {**env, **stores_env})
        servers.callback(dask.stop)
        for key, value in stores_env.items():
            monkeypatch.setenv(key, value)

        def settings(home: Path) -> object:
            cfg = config(home, folder, entity_id="order_id", timestamp="ts")
            return cfg.model_copy(
                update={"task_runner": "dask", "dask_address": dask.address, "partition_rows": 20}
            )

        folder = tmp_path / "sales"  # the source: where the data arrives, not a store
        folder.mkdir()
        sales(300, 0, 1).to_parquet(folder / "day1.parquet")
        first = tmp_path / "one"
        killed = threading.Event()

        def kill_when_scoring() -> None:
            """Kill worker A once it has fetched the model: it is scoring a partition."""
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not killed.is_set():
                if (workers[0] / ".aepipe" / "models").exists():
                    os.killpg(dask.workers[0].pid, signal.SIGKILL)  # kill -9, no goodbye
                    killed.set()
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_scoring, daemon=True)
        killer.start()
        trained = reduce_features(settings(first))
        killed.set()  # stops the watch if it never fired
        killer.join()
        assert dask.workers[0].poll() is not None, "worker A was never killed mid-write"
        table = read_features("sales", home=tmp_path / "reader")
        assert len(table) == 300 and table["entity_id"].is_unique
        # the workers worked in their own homes and published there: nothing shared but S3
        assert list((workers[1] / ".aepipe" / "data").rglob("*.parquet")) or list(
            (workers[0] / ".aepipe" / "data").rglob("*.parquet")
        )
        trained_keys = bucket_keys(remote, "aepipe/")
        assert any(k.endswith("/normalized.parquet") for k in trained_keys)
        shutil.rmtree(first)

        sales(40, 300, 2).to_parquet(folder / "day2.parquet")
        second = tmp_path / "two"
        scored = score_features(settings(second))
        # issue 42: the commit's marker (the folder's newest file) is read past: day2 alone
        assert (scored.rows_seen, scored.rows_written) == (40, 40)
        assert scored.model_version == trained.model_version
        # issue 40.1: a fresh worker with nothing new. Its ingest is a cache hit made by home
        # two, rebased onto this home, whose files only S3 holds (before: FileNotFoundError
        # from check_source_shape's read of raw.parquet)
        shutil.rmtree(second)
        again = score_features(settings(tmp_path / "four"))
        assert (again.rows_seen, again.rows_written) == (40, 0)  # the last run read 40
        assert "unchanged since the scoring run" in again.selection  # issue 40.4: the note
        boto3.client(
            "s3", endpoint_url=remote.env["AWS_ENDPOINT_URL"], region_name="us-east-1"
        ).delete_object(Bucket=BUCKET, Key="aepipe/data/sales/last-score.json")
        again = score_features(settings(tmp_path / "five"))  # the whole flow, cache rebased
        assert (again.rows_seen, again.rows_written) == (340, 0)
        assert "rows whose (entity id, event time) pairs" in again.selection

        table = read_features("sales", home=tmp_path / "three")
        assert len(table) == 340 and table["entity_id"].is_unique
        assert not (tmp_path / "three").exists()
        # issue 40.1: every reader command from a home that never ran anything
        check_readers_from_an_empty_home(tmp_path / "six", trained.model_version, capsys)
    keys = bucket_keys(remote, "aepipe/")
    # issue 40.2: the training's ingest (day 1 only) went when the day-2 scoring landed
    assert len([k for k in keys if k.endswith("/raw.parquet")]) == 1
    assert not any(k.endswith("/normalized.parquet") for k in keys)
    assert not any("/.lease-" in k for k in keys)
    assert any("/checkpoints/" in k for k in keys)
    assert any(k.startswith("aepipe/results/") for k in keys)  # Prefect's cached results
    assert not any("/parts-" in k for k in keys)  # the partitions' files went with the merge
    engine = sa.create_engine(orchestration.replace("+asyncpg", "+psycopg2", 1))
    with engine.connect() as conn:  # the runs are in PostgreSQL, the server's own database
        runs = conn.execute(
            sa.text("SELECT flow.name FROM flow JOIN flow_run ON flow.id = flow_run.flow_id")
        )
        names = {row[0] for row in runs}
    engine.dispose()
    assert {"reduce-features", "score-features"} <= names


def bucket_keys(remote: Remote, prefix: str) -> list[str]:
    """Every key under ``prefix`` in the test bucket."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=remote.env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def check_readers_from_an_empty_home(home: Path, version: int, capsys) -> None:
    """`aepipe features`, `drift` and `models` in a home that never ran anything, every
    store remote: each answers from the stores, and the home stays empty of data."""
    from aepipe.cli import main

    def run(*args: str) -> str:
        capsys.readouterr()
        status = main([*args, "--home", str(home)])
        out = capsys.readouterr()
        assert status == 0, out.err
        return out.out

    assert "entity_id" in run("features", "sales", "--limit", "2")
    assert "checks," in run("drift", "sales")
    assert "aepipe-sales" in run("models", "list")
    compared = run("models", "compare", "aepipe-sales").splitlines()
    assert compared[1].split()[:2] == [str(version), "champion"]
    assert not (home / "data").exists()


def test_runs_on_two_machines_take_turns_in_the_catalog_database(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20.2: the registry and scoring locks hold across machines (two homes sharing no
    folder) where the catalog is PostgreSQL: an advisory lock in it, let go when its holder's
    connection ends. With a local catalog each home has its own lock files: no turns."""
    import threading

    from stores.locks import store_lock

    remote.use(monkeypatch)
    one, two = resolve_stores(tmp_path / "one"), resolve_stores(tmp_path / "two")
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with store_lock(one, "registry-m"):
            order.append("one in")
            held.set()
            time.sleep(1.0)
            order.append("one out")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(30)
    with store_lock(two, "registry-m"):  # waits for the other machine's run
        order.append("two in")
    thread.join()
    assert order == ["one in", "one out", "two in"]
    with store_lock(two, "scoring-m"), store_lock(one, "registry-m"):
        pass  # other names do not wait for each other
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists()

    # a run killed while it holds the lock (kill -9: no finally runs) lets go with its
    # connection, and the other machine's run goes on
    code = (
        "import sys, time; from stores import resolve_stores; from stores.locks import store_lock\n"
        f"with store_lock(resolve_stores({str(tmp_path / 'three')!r}), 'registry-m'):\n"
        "    print('held', flush=True); time.sleep(300)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        got = threading.Event()

        def waiter() -> None:
            with store_lock(two, "registry-m"):
                got.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        assert not got.wait(2.0)  # its holder lives: the lock is held
        os.kill(holder.pid, signal.SIGKILL)
        assert got.wait(60)  # its holder died: the lock went with its connection
        thread.join(60)
    finally:
        holder.kill()
        holder.wait()

    monkeypatch.delenv("AEPIPE_CATALOG")  # local catalogs: a lock file per home
    local_one, local_two = resolve_stores(tmp_path / "one"), resolve_stores(tmp_path / "two")
    with store_lock(local_one, "registry-m"), store_lock(local_two, "registry-m"):
        assert (tmp_path / "one" / "locks" / "registry-m.lock").exists()


def test_an_object_store_data_store_mirrors_each_home(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20.1: with ``AEPIPE_DATA`` on S3, a home's files are published under the same
    relative path, fetched whole (files and folders) by a home that lacks them, and Prefect's
    results are read and written there."""
    from stores import data as data_store

    remote.use(monkeypatch, AEPIPE_DATA=f"s3://{BUCKET}/mirror")
    one, two = resolve_stores(tmp_path / "one"), resolve_stores(tmp_path / "two")
    assert one.data_dir == one.home / "data"  # the home is the local copy
    made = one.models_dir / "m" / "v1"
    (made / "sub").mkdir(parents=True)
    (made / "model.json").write_text("{}")
    (made / "sub" / "weights.bin").write_bytes(b"\0" * 3_000_000)
    data_store.publish(one, made)
    assert data_store.location(one, made) == f"s3://{BUCKET}/mirror/models/m/v1"

    wanted = two.models_dir / "m" / "v1"
    assert data_store.exists(two, wanted) and not wanted.exists()
    assert data_store.fetch(two, wanted)
    assert (wanted / "sub" / "weights.bin").read_bytes() == b"\0" * 3_000_000
    assert not list(wanted.parent.glob(".*.part"))  # no half-fetched copy left
    assert not data_store.fetch(two, two.models_dir / "m" / "v2")  # not published: False

    monkeypatch.setenv("AEPIPE_HOME", str(two.home))  # a worker whose home is 'two'
    ref = data_store.location(one, made / "model.json")
    assert data_store.local_copy(ref, one) == str(wanted / "model.json")
    assert data_store.localize(str(made / "model.json"), one) == str(wanted / "model.json")

    data_store.discard(one, made)
    three = resolve_stores(tmp_path / "three")
    assert not data_store.exists(three, three.models_dir / "m" / "v1")

    from tasks.config import build_config
    from tasks.stages import NormalizedData
    from tasks.train import checkpoint_dir

    def key(stores):  # the checkpoint folder of one data set's training, relative to a home
        path = stores.data_dir / "digits" / "f00" / "normalized.parquet"
        data = NormalizedData(str(path), "", 1797, ["x"], {"train": 1797}, False)
        cfg = build_config({"home": str(stores.home)})
        return checkpoint_dir(data, cfg, stores).relative_to(stores.home)

    assert key(one) == key(two)  # so a training killed in one home resumes in another
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import JSONSerializer, PickleSerializer

    from tasks.results import ObjectStoreResults, RefusedResult

    results = ObjectStoreResults(basepath=f"s3://{BUCKET}/mirror/results")
    cached = ResultRecord(
        metadata=ResultRecordMetadata(serializer=JSONSerializer()), result={"rows": 1}
    ).serialize()
    uri = results.write_path("key-1", cached)
    assert uri == f"s3://{BUCKET}/mirror/results/key-1"
    assert results.read_path("key-1") == results.read_path(uri) == cached
    pickled = ResultRecord(
        metadata=ResultRecordMetadata(serializer=PickleSerializer()), result={"rows": 1}
    ).serialize()
    results.write_path("key-3", pickled)  # a record naming pickle: never read, whatever it holds
    with pytest.raises(RefusedResult, match="names the serializer 'pickle'"):
        results.read_path("key-3")
    with pytest.raises(ValueError, match="does not exist"):
        results.read_path("key-2")


def test_upkeep_prunes_and_expires_on_the_object_store(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 40.2: superseded ingests and expired files go from S3 too, from any home."""
    from tests.stores.test_upkeep import check_remote_upkeep

    remote.use(monkeypatch, AEPIPE_DATA=f"s3://{BUCKET}/upkeep")
    check_remote_upkeep(resolve_stores(tmp_path / "one"), resolve_stores(tmp_path / "two"))


def test_a_tracking_database_password_shows_nowhere(
    remote: Remote, prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Issue 47.5: with AEPIPE_TRACKING_URI a PostgreSQL URI holding a password, the password
    showed in the run summary's MLflow UI line, the Prefect artifacts and events and `aepipe
    ui`. A whole run on the real PostgreSQL: it is in nothing printed, nothing under the home
    and nothing the Prefect server stored (its artifacts, events and logs)."""
    from prefect.settings import get_current_settings

    from aepipe.cli import main
    from flows.reduce_features import reduce_features
    from tasks.config import build_config

    secret = "fake-pa55word-9d1"
    database = create_database(remote.postgres, "mlflow_with_password")
    uri = (
        database.replace("://", f"://aepipe:{secret}@", 1)
        if "@" not in database
        else (database.replace("@", f":{secret}@", 1))
    )
    monkeypatch.setenv("AEPIPE_TRACKING_URI", uri)
    home = tmp_path / "home"
    summary = reduce_features(build_config({"home": str(home), "train": {"epochs": 2}}))
    assert summary.model_version == 1
    assert main(["ui", "--home", str(home)]) == 0
    time.sleep(3)  # events reach the server's database a moment after they are emitted
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err + summary.to_text()
    url = get_current_settings().server.database.connection_url.get_secret_value()
    prefect_db = Path(url.split("///", 1)[1])
    stored = [*prefect_db.parent.glob(prefect_db.name + "*"), *home.rglob("*")]
    for path in stored:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
