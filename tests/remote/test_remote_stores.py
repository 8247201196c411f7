"""Feature tables on remote stores, for real: a PostgreSQL catalog (the ``pgserver`` package's
server) and an S3 warehouse (``moto`` in server mode, checking credentials), written from one
home and read from others; and each way a remote store can be wrong, reported in one line
before any work."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from stores import resolve_stores
from tests.feature_store.test_store import make_batch
from tests.services import create_database, free_port, postgres, start_moto, stop

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

    refusing = f"postgresql+psycopg2://aepipe:hunter2@127.0.0.1:{free_port()}/catalog"
    remote.use(monkeypatch, AEPIPE_CATALOG=refusing)
    message = _check(tmp_path)
    assert message.startswith("the Iceberg catalog database postgresql+psycopg2://***@127.0.0.1")
    assert "refuses connections" in message and "hunter2" not in message

    remote.use(monkeypatch, AEPIPE_CATALOG="postgresql+nosuchdriver://u@127.0.0.1/catalog")
    assert "pip install 'aepipe[scale]'" in _check(tmp_path)


def test_a_run_with_every_store_remote_is_scored_and_read_from_empty_homes(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20.5 in part: `reduce-features` with Prefect (a server on PostgreSQL), MLflow (a
    server on PostgreSQL keeping its artifacts on S3), the catalog (PostgreSQL) and the
    warehouse (S3) remote; its home is deleted; `score-features` from a second, empty home
    appends the source's new rows; a third reads them."""
    import sqlalchemy as sa
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from feature_store import read_features
    from flows.reduce_features import reduce_features
    from flows.score_features import score_features
    from tests.flows.test_score_features import config, sales
    from tests.services import prefect_env, start_mlflow, start_prefect

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
        remote.use(monkeypatch, AEPIPE_TRACKING_URI=f"http://127.0.0.1:{port}")
        folder = tmp_path / "sales"  # the source: where the data arrives, not a store
        folder.mkdir()
        sales(300, 0, 1).to_parquet(folder / "day1.parquet")
        first = tmp_path / "one"
        trained = reduce_features(config(first, folder, entity_id="order_id", timestamp="ts"))
        shutil.rmtree(first)

        sales(40, 300, 2).to_parquet(folder / "day2.parquet")
        second = tmp_path / "two"
        scored = score_features(config(second, folder, entity_id="order_id", timestamp="ts"))
        assert (scored.rows_seen, scored.rows_written) == (340, 40)
        assert scored.model_version == trained.model_version

        table = read_features("sales", home=tmp_path / "three")
        assert len(table) == 340 and table["entity_id"].is_unique
        assert not (tmp_path / "three").exists()
    engine = sa.create_engine(orchestration.replace("+asyncpg", "+psycopg2", 1))
    with engine.connect() as conn:  # the runs are in PostgreSQL, the server's own database
        runs = conn.execute(
            sa.text("SELECT flow.name FROM flow JOIN flow_run ON flow.id = flow_run.flow_id")
        )
        names = {row[0] for row in runs}
    engine.dispose()
    assert {"reduce-features", "score-features"} <= names


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

    monkeypatch.delenv("AEPIPE_CATALOG")  # local catalogs: a lock file per home
    local_one, local_two = resolve_stores(tmp_path / "one"), resolve_stores(tmp_path / "two")
    with store_lock(local_one, "registry-m"), store_lock(local_two, "registry-m"):
        assert (tmp_path / "one" / "locks" / "registry-m.lock").exists()
