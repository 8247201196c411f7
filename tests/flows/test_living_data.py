"""A day in the life of a changing customer table, on a real catalog and Prefect server.

500 customers over ten simulated days: each day some are updated (a new version: same id, a
new ``updated_at``) and some are new; on day 4 a row arrives late (a time before the last
scored one), on day 6 a true duplicate (same id, same time) is appended. After each day's
scheduled scoring run the feature table holds exactly the versions the source has; the
point-in-time join returns the version each hand-built moment should see; maintenance keeps
every time-travel read that is still inside the retention window working.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_store import get_historical_features, load_table, maintain_table, read_features
from flows.reduce_features import reduce_features
from flows.score_features import score_features
from tasks.config import build_config

pytestmark = pytest.mark.slow
T0 = datetime(2026, 5, 1, tzinfo=UTC)
TIERS = ["bronze", "silver", "gold"]


def customer_rows(ids: list[int], when: list[datetime], rng: np.random.Generator) -> pd.DataFrame:
    n = len(ids)
    balance = rng.gamma(2.0, 50.0, n)  # one hidden factor behind every column: learnable
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in ids],
            "updated_at": [w.isoformat() for w in when],
            "balance": balance.round(2),
            "visits": np.round(balance / 10 + rng.normal(0, 1, n)).clip(0),
            "spend": (balance * 0.3 + rng.normal(0, 3, n)).round(2),
            "tier": np.array(TIERS)[np.digitize(balance, [60, 140])],
        }
    )


def day_time(day: float, rng: np.random.Generator, n: int) -> list[datetime]:
    return [T0 + timedelta(days=day, minutes=int(m)) for m in rng.integers(0, 600, n)]


def history(seed: int = 7) -> list[pd.DataFrame]:
    """The source as it stands at the end of each of ten days: an event log of versions."""
    rng = np.random.default_rng(seed)
    log = customer_rows(list(range(500)), day_time(0, rng, 500), rng)
    days, next_id = [log], 500
    for day in range(1, 10):
        known = sorted({int(c[1:]) for c in log["customer_id"]})
        updated = rng.choice(known, 40, replace=False).tolist()
        new = list(range(next_id, next_id + 10))
        next_id += 10
        parts = [log, customer_rows(updated + new, day_time(day, rng, 50), rng)]
        if day == 4:  # c7's version of day 1.5 arrives late, after days 2 and 3 were scored
            parts.append(customer_rows([7], [T0 + timedelta(days=1, hours=12)], rng))
        if day == 6:  # the same version of c3 sent twice: a true duplicate
            parts.append(log[log["customer_id"] == "c3"].head(1))
        log = pd.concat(parts, ignore_index=True)
        days.append(log)
    return days


def versions(source: pd.DataFrame) -> set[tuple[str, pd.Timestamp]]:
    when = pd.to_datetime(source["updated_at"], utc=True)
    return set(zip(source["customer_id"], when, strict=True))


def table_versions(home, **kw) -> list[tuple[str, pd.Timestamp]]:
    got = read_features("customers", home=home, columns=["entity_id", "event_timestamp"], **kw)
    return list(zip(got["entity_id"], got["event_timestamp"], strict=True))


def test_ten_days_of_a_changing_customer_table(aepipe_main, home, tmp_path) -> None:
    source = tmp_path / "customers.csv"
    days = history()
    cfg = build_config(
        {
            "home": str(home),
            "dataset": "customers",
            "source": {
                "path": str(source),
                "entity_id": "customer_id",
                "timestamp": "updated_at",
                "max_quarantine_fraction": 0.01,
            },
            "model": {"code_size": 3, "params": {"hidden": [16]}},
            "train": {"epochs": 8, "lr": 3e-3, "patience": 0},  # learns: champion
        }
    )
    days[0].to_csv(source, index=False)
    reduce_features(cfg)
    snapshots = [load_table("customers", home).current_snapshot().snapshot_id]
    assert sorted(table_versions(home)) == sorted(versions(days[0]))

    for day in range(1, 10):
        days[day].to_csv(source, index=False)
        scored = score_features(cfg)
        want = versions(days[day])
        have = table_versions(home)
        assert len(have) == len(set(have)), f"day {day}: a version was scored twice"
        assert set(have) == want, f"day {day}: the table does not hold the source's versions"
        assert scored.rows_written == len(want) - len(versions(days[day - 1]))
        snapshots.append(load_table("customers", home).current_snapshot().snapshot_id)
        time.sleep(0.02)
    assert scored.rows_written == 50
    late = (("c7", pd.Timestamp(T0 + timedelta(days=1, hours=12))),)
    assert set(late) <= set(table_versions(home, as_of=snapshots[4]))
    assert not set(late) & set(table_versions(home, as_of=snapshots[3]))

    # the newest version of each entity, and the one each hand-built moment should see
    newest = read_features("customers", latest=True, home=home)
    final = days[-1].assign(t=pd.to_datetime(days[-1]["updated_at"], utc=True))
    expected_newest = final.groupby("customer_id")["t"].max()
    assert newest["entity_id"].is_unique and len(newest) == len(expected_newest)
    got_newest = newest.set_index("entity_id")["event_timestamp"].sort_index()
    assert (got_newest == expected_newest.sort_index()).all()
    shown = aepipe_main("features", "customers", "--latest", "--home", str(home), cwd=tmp_path)
    assert shown.returncode == 0 and f"({len(expected_newest)} rows)" in shown.stdout
    rng = np.random.default_rng(1)
    probes = pd.DataFrame(
        {
            "entity_id": rng.choice(final["customer_id"].unique(), 200),
            "event_timestamp": [T0 + timedelta(hours=int(h)) for h in rng.integers(0, 240, 200)],
        }
    )
    probes = pd.concat(
        [probes, pd.DataFrame({"entity_id": ["c7"], "event_timestamp": [T0 + timedelta(days=2)]})]
    )
    joined = get_historical_features(probes, "customers", home=home)
    for entity, at, got in zip(
        probes["entity_id"], probes["event_timestamp"], joined["feature_timestamp"], strict=True
    ):
        seen = final.loc[(final["customer_id"] == entity) & (final["t"] <= at), "t"]
        assert (pd.isna(got) and seen.empty) or got == seen.max(), (entity, at)
    assert joined["feature_timestamp"].iloc[-1] == late[0][1]  # the late row, found

    # upkeep: a week on from day 5's run, snapshots before it expire; reads from then on stay
    tbl = load_table("customers", home)
    committed = {e.snapshot_id: e.timestamp_ms for e in tbl.history()}
    at = [datetime.fromtimestamp(committed[s] / 1000, UTC) for s in snapshots]
    still = {d: sorted(table_versions(home, as_of=at[d])) for d in range(5, 10)}
    done = maintain_table("customers", home=home, now=at[5] + timedelta(days=7, milliseconds=5))
    assert done.expired >= 5 and done.deleted > 0
    for d, rows in still.items():
        assert sorted(table_versions(home, as_of=at[d])) == rows
    assert sorted(table_versions(home)) == sorted(versions(days[-1]))
