"""Report: one summary of the run, printed for the terminal and kept as a Prefect artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from stores import Stores, console_script, python_command, redact_uri, resolve_stores
from tasks.materialize import Materialized
from tasks.monitor import artifact_key
from tasks.register import RegisteredModel
from tasks.stages import IngestResult, NormalizedData
from tasks.train import TrainedModel

QUALITY_FIGURES = (
    "baseline_mse",
    "baseline_bce",
    "recon_vs_baseline",
    "codes_logreg_accuracy",
    "codes_5nn_accuracy",
    "majority_accuracy",
    "test_auroc",
    "test_average_precision",
)


@dataclass(frozen=True)
class RunSummary:
    """What a ``reduce_features`` run did, in the terms a user acts on."""

    dataset: str
    rows_ingested: int
    rows_quarantined: int
    quarantine_path: str | None
    features_in: int
    code_size: int
    model_name: str
    model_version: int
    aliases: list[str]
    promotion: str
    test_mse: float
    test_bce: float
    best_epoch: int
    train_seconds: float
    device: str
    table: str
    rows_written: int
    anomalies: int
    run_id: str
    home: str
    warehouse: str
    prefect_ui: str
    mlflow_ui: str
    pictures: list[str]
    experiment_id: str = ""
    mlflow_url: str = ""  # where a browser reaches the MLflow UI
    home_flag: str = ""  # " --home X" when the run's home is not the default one
    quality: dict[str, float] = field(default_factory=dict)  # figures and their baselines
    quarantine_note: str = ""  # " (+N quarantined: reasons; path)", or ''
    columns: list[str] = field(default_factory=list)  # each source column: role or encoding
    label_note: str = ""  # what the label was taken as, and why

    def warnings(self) -> list[str]:
        """What a reader must not miss: a model that learned nothing, codes that carry no
        more about the label than the majority class, scores no better than chance."""
        q, out = self.quality, []
        if q.get("recon_vs_baseline", 0.0) >= 1.0:
            out.append(
                "the model reconstructs no better than each column's training mean: it "
                "learned nothing and was not promoted"
            )
        majority = q.get("majority_accuracy")
        if majority is not None and q.get("codes_logreg_accuracy", 1.0) <= majority + 0.005:
            out.append(
                f"logistic regression on the codes ({q['codes_logreg_accuracy']:.3f}) does no "
                f"better than always answering the majority class ({majority:.3f})"
            )
        auroc = q.get("test_auroc", 1.0)
        if auroc < 0.45:  # worse than chance: the order is turned round, not random
            out.append(
                f"the anomaly scores rank the labelled anomalies mostly LAST: inverted (AUROC "
                f"{auroc:.3f}; chance is 0.5): check that 1 marks the anomalies, or set "
                "source.label_kind: class if the label is a class"
            )
        elif auroc <= 0.55:
            out.append(
                f"the anomaly scores rank the labelled anomalies about as well as chance "
                f"(AUROC {auroc:.3f}; chance is 0.5)"
            )
        return out

    def quality_lines(self) -> list[str]:
        """Each figure beside its trivial baseline, for the terminal."""
        q, lines = self.quality, []
        if "baseline_mse" in q:
            lines.append(
                f"  trivial baseline   MSE {q['baseline_mse']:.5f}   BCE {q['baseline_bce']:.5f}"
                "   (every row reconstructed as the training columns' means)"
            )
        if "codes_logreg_accuracy" in q:
            lines.append(
                f"  codes -> label     logistic regression {q['codes_logreg_accuracy']:.3f}, "
                f"5-NN {q['codes_5nn_accuracy']:.3f}   (majority class "
                f"{q.get('majority_accuracy', float('nan')):.3f})"
            )
        if "test_auroc" in q:
            lines.append(
                f"  anomaly scores     AUROC {q['test_auroc']:.3f}, average precision "
                f"{q['test_average_precision']:.3f}   (chance: AUROC 0.5)"
            )
        return lines

    def picture_links(self) -> list[tuple[str, str]]:
        """(title, URL) of each picture as the MLflow UI serves it (``get-artifact``), so a
        browser opens it from the Prefect UI while that MLflow UI runs."""
        base = self.mlflow_url
        return [
            (
                Path(p).stem.replace("_", " "),
                f"{base}/get-artifact?path=plots/{Path(p).name}&run_id={self.run_id}",
            )
            for p in self.pictures
        ]

    def table_rows(self) -> list[dict[str, str]]:
        """The figures a scheduled run is checked by, as rows for a Prefect table artifact."""
        figures = {
            "data set": self.dataset,
            "rows ingested": self.rows_ingested,
            "rows quarantined": self.rows_quarantined,
            "features in -> code": f"{self.features_in} -> {self.code_size}",
            "model version": f"{self.model_name} v{self.model_version}",
            "aliases": ", ".join(self.aliases),
            "promotion": self.promotion,
            "test MSE": f"{self.test_mse:.5f}",
            "test BCE": f"{self.test_bce:.5f}",
            **{k.replace("_", " "): f"{v:.5g}" for k, v in self.quality.items()},
            "training": f"{self.train_seconds:.1f} s on {self.device}",
            "feature table rows": self.rows_written,
            "flagged is_anomaly": self.anomalies,
            "MLflow run": self.run_id,
        }
        return [{"item": k, "value": str(v)} for k, v in figures.items()]

    def to_text(self) -> str:
        """Plain-text summary for the terminal."""
        alias = ", ".join(self.aliases)
        home_arg = f", home={self.home!r}" if self.home_flag else ""
        # not the champion (the table's default reader): point at this run's own rows
        own = "champion" not in self.aliases
        version_arg = f", {self.model_version}" if own else ""
        version_flag = f" --version {self.model_version}" if own else ""
        return "\n".join(
            [
                f"aepipe: reduced {self.dataset!r} from {self.features_in} to {self.code_size} "
                "features",
                f"  rows ingested      {self.rows_ingested}{self.quarantine_note}",
                *_wrapped("  columns            ", self.columns),
                f"  model              {self.model_name} version {self.model_version} "
                f"(alias: {alias}; {self.promotion})",
                f"  test recon error   MSE {self.test_mse:.5f}   BCE {self.test_bce:.5f}"
                f"   (best epoch {self.best_epoch}, {self.train_seconds:.1f} s on {self.device})",
                *([f"  label              {self.label_note}"] if self.label_note else []),
                *self.quality_lines(),
                f"  feature table      aepipe.{self.table}: {self.rows_written} rows, "
                f"{self.anomalies} flagged is_anomaly",
                f"                     warehouse {self.warehouse}",
                f'  read it            {python_command()} -c "from feature_store import '
                f"read_features; print(read_features('{self.table}'{version_arg}{home_arg}))\"",
                f"                     or: {console_script('aepipe')} features {self.table}"
                f"{version_flag}{self.home_flag}",
                f"  MLflow run         {self.run_id} ({len(self.pictures)} pictures under "
                "artifacts/plots)",
                f"  Prefect UI         {self.prefect_ui}",
                f"  MLflow UI          {self.mlflow_ui}",
                *(f"  WARNING            {w}" for w in self.warnings()),
            ]
        )

    def to_markdown(self) -> str:
        """Markdown summary for the Prefect UI."""
        places = [
            {"item": "feature table", "value": f"aepipe.{self.table}"},
            {"item": "warehouse", "value": self.warehouse},
            {"item": "quarantine", "value": self.quarantine_path or "none"},
        ]  # the figures as the table artifact names and rounds them, then where things are
        rows = "\n".join(f"| {r['item']} | {r['value']} |" for r in self.table_rows() + places)
        warned = "".join(f"> **Warning:** {w}\n\n" for w in self.warnings())
        run_page = f"{self.mlflow_url}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        pictures = "\n\n".join(
            f"**{title}**\n\n![{title}]({url})" for title, url in self.picture_links()
        )
        return (
            f"# aepipe run: {self.dataset}\n\n{warned}| field | value |\n|---|---|\n{rows}\n\n"
            f"## Pictures\n\nServed by the MLflow UI (start it with `{self.mlflow_ui}`); "
            f"the run: [{run_page}]({run_page})\n\n{pictures or 'none'}\n"
        )


def _wrapped(first: str, items: list[str], width: int = 100) -> list[str]:
    """``items`` joined by "; " into lines of at most ``width``, the first after ``first``,
    the rest indented as far."""
    import textwrap

    if not items:
        return []
    return textwrap.wrap(
        "; ".join(items),
        width,
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_long_words=False,
        break_on_hyphens=False,
    )


def describe_columns(ingested: IngestResult, data: NormalizedData) -> list[str]:
    """Every source column in words: its role, how it was encoded, or why it was left out."""
    import json

    from ae_models.preprocessing.normalizer import Normalizer

    out = [f"{c}: {role}" for c, role in ingested.roles.items()]
    try:
        specs = Normalizer.from_dict(json.loads(Path(data.spec_path).read_text())).columns
    except (OSError, ValueError, KeyError):
        specs = []  # (the data store is remote and the spec is not here: roles only)
    scaled = [c for c in specs if c.kind == "scaled"]
    if scaled:
        out.append(f"{len(scaled)} values (pixels) scaled to [0, 1]")
    for c in specs:
        if c.kind == "numeric":
            how = c.scaler + (", log1p" if c.log1p else "")
            how += ", +missing flag" if c.missing_indicator else ""
            out.append(f"{c.source}: number ({how})")
        elif c.kind == "categorical":
            out.append(f"{c.source}: one-hot ({len(c.levels)} levels + other, missing)")
        elif c.kind == "boolean":
            out.append(f"{c.source}: boolean")
    out += [f"{c}: left out, {why}" for c, why in ingested.left_out.items()]
    return out


def summarize(
    ingested: IngestResult,
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    written: Materialized,
    stores: Stores,
) -> RunSummary:
    """Collect the run's references into a :class:`RunSummary`; inside a Prefect flow run it
    is also attached to the run as a markdown artifact."""
    ui = stores.ui_commands()
    summary = RunSummary(
        dataset=written.table,
        rows_ingested=ingested.rows,
        rows_quarantined=ingested.quarantined,
        quarantine_path=ingested.quarantine_path,
        quarantine_note=ingested.quarantine_note(),
        columns=describe_columns(ingested, data),
        label_note=trained.label_note,
        features_in=len(data.features),
        code_size=trained.code_size,
        model_name=registered.model_name,
        model_version=registered.version,
        aliases=registered.aliases,
        promotion=registered.reason,
        test_mse=trained.metrics["test_mse"],
        test_bce=trained.metrics["test_bce"],
        best_epoch=int(trained.metrics["best_epoch"]),
        train_seconds=trained.metrics["train_seconds"],
        device=trained.device,
        table=written.table,
        rows_written=written.rows,
        anomalies=written.anomalies,
        run_id=registered.run_id,
        home=str(stores.home),
        warehouse=redact_uri(stores.warehouse),
        prefect_ui=ui["prefect"],
        mlflow_ui=ui["mlflow"],
        pictures=sorted(str(p) for p in Path(trained.plots_dir).glob("*.png")),
        experiment_id=registered.experiment_id,
        mlflow_url=stores.mlflow_ui_url,
        home_flag="" if stores.home == resolve_stores().home else f" --home {stores.home}",
        quality={k: v for k, v in trained.metrics.items() if k in QUALITY_FIGURES},
    )
    if FlowRunContext.get() is not None:
        create_markdown_artifact(
            summary.to_markdown(),
            key=artifact_key(summary.dataset, "run"),
            description="aepipe run summary",
        )
        create_table_artifact(
            summary.table_rows(),
            key=artifact_key(summary.dataset, "summary"),
            description="aepipe run summary table",
        )
    return summary


report = task(name="report")(summarize)
