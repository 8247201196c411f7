"""The ``aepipe`` command line: run the pipeline, read feature tables, show where the UIs are.

Problems a user can fix end in a one-line ``aepipe: error: ...`` and exit status 2, with
nothing written; unexpected failures print one line too, and the full trace goes to a log file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aepipe import __version__
from aepipe.stopping import by_termination, stop_on_sigterm
from stores import Stores, resolve_stores

EXIT_USAGE = 2
EXIT_FAILURE = 1

# flag -> dotted config key; each flag overrides the YAML file's value. Their help, type,
# choices and defaults come from the config models (tasks.config_reference.describe), so they cannot
# drift from what a run does. `score` and `downstream` take only the flags that locate the
# data: the model's settings come from the registered version they use.
DATA_FLAGS: dict[str, str] = {
    "--dataset": "dataset",
    "--source": "source.path",
    "--format": "source.format",
    "--entity-id": "source.entity_id",
    "--timestamp": "source.timestamp",
    "--label": "source.label",
    "--delimiter": "source.delimiter",
    "--registered-model": "registered_model",
    "--home": "home",
}
RUN_FLAGS: dict[str, str] = {
    **DATA_FLAGS,
    "--model": "model.name",
    "--code-size": "model.code_size",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--lr": "train.lr",
    "--seed": "train.seed",
    "--device": "train.device",
    "--contamination": "contamination",
}


def _parser() -> argparse.ArgumentParser:
    """The ``aepipe`` command line: a builder a subcommand below."""
    parser = argparse.ArgumentParser(
        prog="aepipe", description="Learned feature reduction with autoencoders."
    )
    parser.add_argument("--version", action="version", version=f"aepipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _pipeline_commands(sub)
    _features_command(sub)
    drift = sub.add_parser("drift", help="print a data set's drift checks, one per scoring run")
    drift.add_argument("dataset", help="data set name (its feature table's name)")
    drift.add_argument("--limit", type=int, default=20, help="latest checks to print (default 20)")
    drift.add_argument("--home", default=None, help="state folder")
    _models_command(sub)
    serve = sub.add_parser(
        "serve",
        help="serve prefect.yaml's deployments (schedules, drift trigger) from this process "
        "on a running Prefect server: one machine, no work pool or worker",
    )
    serve.add_argument(
        "config", nargs="?", help="YAML config for the deployments (default: prefect.yaml's)"
    )
    serve.add_argument("--file", default=None, help="prefect.yaml to serve (default: aepipe's)")
    serve.add_argument("--home", default=None, help="state folder of the served runs")
    ui = sub.add_parser("ui", help="print the commands that open the Prefect and MLflow UIs")
    ui.add_argument("--home", default=None, help="state folder")
    return parser


def _pipeline_commands(sub: Any) -> None:
    """``run``, ``score`` and ``downstream``: a config file, flags for its common keys and
    ``--set`` for any key."""
    from tasks.config_reference import describe
    from tasks.registry import CHAMPION

    run = sub.add_parser("run", help="ingest, train, register and write the feature table")
    score = sub.add_parser(
        "score", help="score new source rows with the champion and append them to the table"
    )
    down = sub.add_parser(
        "downstream",
        help="fit a classifier on the feature table and on raw features and PCA; compare",
    )
    down.add_argument(
        "--model-version", default=CHAMPION, help=f"alias or version number (default {CHAMPION})"
    )
    for cmd, flags in ((run, RUN_FLAGS), (score, DATA_FLAGS), (down, DATA_FLAGS)):
        cmd.add_argument("config", nargs="?", help="YAML config file (flags override it)")
        for flag, key in flags.items():
            doc = describe(key)
            cmd.add_argument(
                flag,
                dest=key,
                type=doc.python_type,
                default=None,
                metavar=key.rsplit(".", 1)[-1].upper(),
                help=doc.help(),
            )
        cmd.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any config key, dotted (e.g. train.patience=5; every key: "
            "docs/configuration.md); repeatable",
        )


def _features_command(sub: Any) -> None:
    """``features``: print, list the files of, or maintain a feature table."""
    from tasks.registry import CHAMPION

    feats = sub.add_parser("features", help="print rows of a feature table")
    feats.add_argument("table", help="feature table name (the data set name)")
    feats.add_argument(
        "--version",
        dest="model_version",
        default=CHAMPION,
        help="'champion', another alias, a version number, or 'all'",
    )
    feats.add_argument("--limit", type=int, default=10, help="rows to print (default 10)")
    feats.add_argument(
        "--as-of", default=None, help="read the table as it was: ISO time (UTC) or snapshot id"
    )
    feats.add_argument("--filter", default=None, help="row filter, e.g. 'recon_error > 0.05'")
    feats.add_argument(
        "--history", action="store_true", help="list the table's commits instead of rows"
    )
    feats.add_argument(
        "--files",
        action="store_true",
        help="print the version's Parquet file paths (for DuckDB, polars, Spark) instead of rows",
    )
    feats.add_argument(
        "--latest",
        action="store_true",
        help="one row per entity: its newest version (latest event time)",
    )
    feats.add_argument(
        "--maintain",
        action="store_true",
        help="expire old snapshots and delete files no kept snapshot needs, and the data "
        "store's files no run needs (superseded ingests, old checkpoints), instead of rows",
    )
    feats.add_argument(
        "--retain-days",
        type=float,
        default=7.0,
        help="with --maintain: keep snapshots this recent (default 7)",
    )
    feats.add_argument(
        "--orphan-age-hours",
        type=float,
        default=24.0,
        help="with --maintain: delete unreferenced files only once this old (default 24)",
    )
    feats.add_argument("--home", default=None, help="state folder")


def _models_command(sub: Any) -> None:
    """``models``: list, compare, promote and serve registered models."""
    models = sub.add_parser("models", help="list, compare and promote registered models")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="registered models with their champion and challenger")
    mcompare = msub.add_parser("compare", help="a model's versions, metrics and aliases")
    mcompare.add_argument("name", help="registered model name, e.g. aepipe-digits")
    mpromote = msub.add_parser("promote", help="make a version the champion (recorded)")
    mpromote.add_argument("name", help="registered model name")
    mpromote.add_argument("version", help="version number")
    mpromote.add_argument("--note", default="", help="why, recorded on the version")
    mserve = msub.add_parser(
        "serve",
        help="serve a version over HTTP (MLflow's scoring server, bounded: body size, rows, "
        "JSON depth, infinite values)",
    )
    mserve.add_argument("name", help="registered model name")
    mserve.add_argument("--alias", default="champion", help="alias or version (default champion)")
    mserve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    mserve.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    mserve.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body (default 16 MB)"
    )
    mserve.add_argument(
        "--max-rows", type=int, default=10_000, help="most rows a request (default 10000)"
    )
    for p in (mlist, mcompare, mpromote, mserve):
        p.add_argument("--home", default=None, help="state folder")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.config import load_yaml

    out: dict[str, Any] = {}
    for key in RUN_FLAGS.values():
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    for item in args.sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = load_yaml(raw, f"--set {key}")
    return out


class _UsageError(Exception):
    """A malformed command line the parser itself cannot catch."""


def _prepare_environment(home: Path, create: bool = True) -> None:
    """Defaults for this process only: project-local Prefect state, no telemetry."""
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    if create:
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


class _FailuresToLog(logging.Filter):
    """Keeps Prefect's failure records off the terminal: each task and flow that fails logs
    the same message again with a traceback (about 120 lines for one bad source). Those
    records go, traces included, to the home's error log; the terminal keeps the progress
    lines and the one line the CLI prints at the end."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.formatter = logging.Formatter("%(asctime)s | %(levelname)s | %(name)s - %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        failed = record.levelno >= logging.ERROR or "Finished in state Failed" in str(record.msg)
        if not failed:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(self.formatter.format(record) + "\n")
        except OSError:
            return True  # no log file: better on the terminal than nowhere
        return False


def _quiet_failures(home: Path) -> Path:
    """Route Prefect's failure records from its console handlers to ``<home>/logs``."""
    from prefect.logging.handlers import PrefectConsoleHandler

    path = home / "logs" / "aepipe-error.log"
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in ("prefect", "prefect.flow_runs")),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _FailuresToLog) for f in handler.filters
            ):
                handler.addFilter(_FailuresToLog(path))
    return path


def _settings(args: argparse.Namespace) -> Any:
    """The pipeline config of a run/score/downstream command, validated (nothing written)."""
    from tasks.config import build_config, load_config
    from tasks.validate import validate_config

    overrides = _overrides(args)
    cfg = load_config(args.config, overrides) if args.config else build_config(_nested(overrides))
    validate_config(cfg, training=args.command == "run")  # before anything is written
    return cfg


def _config(args: argparse.Namespace) -> Any:
    """The pipeline config of a run/downstream command, checked before anything runs; the
    Prefect server the flow needs starting meanwhile (see :func:`_checked_with_prefect`).
    Returns the config and the context the flow runs in."""
    cfg = _settings(args)
    return cfg, _checked_with_prefect(cfg, resolve_stores(cfg.home))


def _checked_with_prefect(
    cfg: Any, stores: Stores, also: Callable[[Any, Stores], Any] | None = None
) -> Callable[[], Any]:
    """Check the stores, and start the run's own Prefect server when none is configured
    (no ``PREFECT_API_URL``; :mod:`aepipe.prefect_server`). Its start takes seconds on 2
    cores, so in a home that has run before it starts first and overlaps the checks and the
    flow's imports; in a new home it starts after the checks, so a store that fails them
    leaves nothing behind. Returns the context the flow runs in (the server answering)."""
    from aepipe.prefect_server import RunServer, configured_server
    from tasks.validate import check_stores

    def check() -> None:
        check_stores(cfg, stores)
        if also is not None:
            also(cfg, stores)

    _prepare_environment(stores.home, create=False)
    log = stores.home / "logs" / "prefect-server.log"
    prefect_home = Path(os.environ["PREFECT_HOME"]).expanduser()
    if not (stores.home.is_dir() and prefect_home.is_dir()):  # a new home
        check()  # before anything is written (Prefect too): a down store is one line
        _prepare_environment(stores.home)
        return contextlib.nullcontext if configured_server() else RunServer(log).serving
    if configured_server():
        check()
        return contextlib.nullcontext
    server = RunServer(log)  # a home that has run: the start overlaps the checks
    check()
    return server.serving


def _run(args: argparse.Namespace) -> int:
    cfg, prefect_ready = _config(args)
    stores = resolve_stores(cfg.home)
    from flows.reduce_features import reduce_features

    _quiet_failures(stores.home)
    with prefect_ready():
        summary = reduce_features(cfg)
    print()
    print(summary.to_text())
    return 0


def _score(args: argparse.Namespace) -> int:
    from tasks.scored import unchanged_scoring

    cfg = _settings(args)
    # nothing new since the last run (its note, the table's champion): answered at once,
    # without MLflow or a Prefect server
    scored = unchanged_scoring(cfg, resolve_stores(cfg.home))
    if scored is None:
        scored = _score_flow(cfg)
    print()
    print(scored.to_text())
    return 0


def _score_flow(cfg: Any) -> Any:
    """The score-features flow on the validated ``cfg``, once the stores answer and the
    model has a champion."""
    from tasks.registry import champion_version

    stores = resolve_stores(cfg.home)
    # no champion: one line, and nothing written in a new home
    prefect_ready = _checked_with_prefect(
        cfg, stores, lambda c, st: champion_version(c.model_name, st)
    )
    from flows.score_features import score_features

    _quiet_failures(stores.home)
    with prefect_ready():
        return score_features(cfg)


def _serve(args: argparse.Namespace) -> int:
    from prefect.settings import get_current_settings

    from flows.serve import PREFECT_YAML, serve
    from tasks.config import load_config
    from tasks.validate import check_stores, validate_config

    api = get_current_settings().api.url
    if not api:
        raise _UsageError(
            "aepipe serve needs a running Prefect server (a temporary one would vanish with "
            "its schedules): start `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    project = Path(args.file) if args.file else PREFECT_YAML
    config = None
    if args.config:
        cfg = load_config(args.config, {"home": args.home} if args.home else {})
        validate_config(cfg, training=True)
        check_stores(cfg, resolve_stores(cfg.home))
        config = cfg.model_dump(mode="json")
    home = resolve_stores(args.home).home
    os.environ.setdefault("AEPIPE_HOME", str(home))  # runs without a home of their own use this
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    print(f"aepipe: serving {project} on {api} (state in {home}); Ctrl-C stops and pauses them")
    serve(project, config)
    return 0


def _downstream(args: argparse.Namespace) -> int:
    cfg, prefect_ready = _config(args)
    from flows.train_downstream import train_downstream_flow

    version = args.model_version
    _quiet_failures(resolve_stores(cfg.home).home)
    with prefect_ready():
        report = train_downstream_flow(cfg, int(version) if version.isdigit() else version)
    print()
    print(report.to_text())
    return 0


def _nested(overrides: dict[str, Any]) -> dict[str, Any]:
    from tasks.config import apply_overrides

    return apply_overrides({}, overrides)


def _drift(args: argparse.Namespace) -> int:
    from feature_store import read_drift

    frame = read_drift(args.dataset, args.home)
    shown = frame[
        ["scored_at", "model_version", "rows", "drifted", "flagged_rate", "expected_rate",
         "score_p_value", "drifted_columns", "reason"]
    ].tail(args.limit)  # fmt: skip
    print(shown.to_string(index=False))
    found = int(frame["drifted"].sum())
    print(f"({len(frame)} checks, {found} with drift)")
    return 0


def _features(args: argparse.Namespace) -> int:
    from feature_store import read_features

    if args.maintain:
        from datetime import timedelta

        from feature_store import maintain_table

        if args.retain_days < 0 or args.orphan_age_hours < 0:
            raise _UsageError("--retain-days and --orphan-age-hours must not be negative")
        from stores.upkeep import maintain_data

        retain, orphan_age = (
            timedelta(days=args.retain_days),
            timedelta(hours=args.orphan_age_hours),
        )
        done = maintain_table(args.table, retain=retain, orphan_age=orphan_age, home=args.home)
        print(done.to_text())
        pruned = maintain_data(resolve_stores(args.home), retain, orphan_age, [args.table])
        print(pruned.to_text())
        return 0
    if args.history:
        from feature_store import table_history

        print(table_history(args.table, args.home).to_string(index=False))
        return 0
    version: str | int | None = args.model_version
    if version == "all":
        version = None
    as_of: str | int | None = args.as_of
    if as_of is not None and as_of.isdigit():
        as_of = int(as_of)
    elif as_of is not None:
        from datetime import datetime

        try:
            datetime.fromisoformat(as_of)
        except ValueError:
            raise _UsageError(
                f"--as-of {as_of!r} is neither an ISO time (2026-11-23T08:00) nor a snapshot id"
            ) from None
    if args.files:
        from feature_store import data_files

        print("\n".join(data_files(args.table, version, as_of=as_of, home=args.home)))
        return 0
    frame = read_features(
        args.table, version, as_of=as_of, filter=args.filter, latest=args.latest, home=args.home
    )
    print(frame.head(args.limit).to_string(max_cols=12))
    print(f"({len(frame)} rows)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from tasks.registry import compare_versions, list_registered, promote_manually

    st = resolve_stores(args.home)
    _prepare_environment(st.home, create=False)
    if args.models_command == "list":
        table = list_registered(st)
        print(table.to_string(index=False) if len(table) else "no registered models")
    elif args.models_command == "compare":
        table = compare_versions(args.name, st)
        print(table.to_string(index=False, max_colwidth=70, float_format=lambda v: f"{v:.5g}"))
    elif args.models_command == "serve":
        from tasks.registry import registry_client
        from tasks.serving import serve_model

        registry_client(st)  # the store exists (one line otherwise); MLflow reads it from here
        at = f"/{args.alias}" if args.alias.isdigit() else f"@{args.alias}"
        serve_model(
            f"models:/{args.name}{at}",
            args.host,
            args.port,
            int(args.max_body_mb * 2**20),
            args.max_rows,
        )
    else:
        print(promote_manually(args.name, args.version, st, note=args.note))
    return 0


def _ui(args: argparse.Namespace) -> int:
    for name, command in resolve_stores(args.home).ui_commands().items():
        print(f"{name:8s} {command}")
    return 0


def _log_trace(st: Stores) -> Path | None:
    """Append the current exception's trace, credentials blanked, to the home's error log."""
    try:
        folder = st.home / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "aepipe-error.log"
        with path.open("a") as fh:
            fh.write(st.redact(traceback.format_exc()))
        return path
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aepipe`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    with stop_on_sigterm():
        try:
            return _command(args)
        except BaseException as err:  # Prefect's TerminationSignal is no Exception
            if not by_termination(err):
                raise
            return 128 + signal.SIGTERM


def _command(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure becomes one line and an exit status."""
    from ae_models.preprocessing.normalizer import SchemaError
    from feature_store import FeatureStoreError
    from stores.space import StoreFull
    from tasks.config import ConfigError

    handlers = {
        "run": _run,
        "score": _score,
        "downstream": _downstream,
        "features": _features,
        "drift": _drift,
        "models": _models,
        "serve": _serve,
        "ui": _ui,
    }
    try:
        return handlers[args.command](args)
    except (ConfigError, SchemaError, FeatureStoreError, StoreFull, _UsageError) as err:
        print(f"aepipe: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aepipe: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the one place that turns any failure into one line
        if by_termination(err):
            raise  # main() stops what still runs
        st = resolve_stores(getattr(args, "home", None))
        trace = _log_trace(st)
        where = f" (full trace in {trace})" if trace else ""
        first = st.redact(str(err).splitlines()[0]) if str(err) else ""
        print(f"aepipe: error: {type(err).__name__}: {first}{where}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
