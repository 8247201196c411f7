"""Report: one summary of the run, printed for the terminal and kept as a Prefect artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from stores import Stores, console_script, python_command
from tasks.ingest import IngestResult
from tasks.materialize import Materialized
from tasks.normalize import NormalizedData
from tasks.register import RegisteredModel
from tasks.train import TrainedModel


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
            "training": f"{self.train_seconds:.1f} s on {self.device}",
            "feature table rows": self.rows_written,
            "flagged is_anomaly": self.anomalies,
            "MLflow run": self.run_id,
        }
        return [{"item": k, "value": str(v)} for k, v in figures.items()]

    def to_text(self) -> str:
        """Plain-text summary for the terminal."""
        alias = ", ".join(self.aliases)
        return "\n".join(
            [
                f"aepipe: reduced {self.dataset!r} from {self.features_in} to {self.code_size} "
                "features",
                f"  rows ingested      {self.rows_ingested}"
                + (
                    f" (+{self.rows_quarantined} quarantined: {self.quarantine_path})"
                    if self.rows_quarantined
                    else ""
                ),
                f"  model              {self.model_name} version {self.model_version} "
                f"(alias: {alias}; {self.promotion})",
                f"  test recon error   MSE {self.test_mse:.5f}   BCE {self.test_bce:.5f}"
                f"   (best epoch {self.best_epoch}, {self.train_seconds:.1f} s on {self.device})",
                f"  feature table      aepipe.{self.table}: {self.rows_written} rows, "
                f"{self.anomalies} flagged is_anomaly",
                f"                     warehouse {self.warehouse}",
                f'  read it            {python_command()} -c "from feature_store import '
                f"read_features; print(read_features('{self.table}'))\"",
                f"                     or: {console_script('aepipe')} features {self.table}",
                f"  MLflow run         {self.run_id} ({len(self.pictures)} pictures under "
                "artifacts/plots)",
                f"  Prefect UI         {self.prefect_ui}",
                f"  MLflow UI          {self.mlflow_ui}",
            ]
        )

    def to_markdown(self) -> str:
        """Markdown summary for the Prefect UI."""
        fields = {k: v for k, v in asdict(self).items() if k != "pictures"}
        rows = "\n".join(f"| {k} | {v} |" for k, v in fields.items())
        pictures = "\n".join(
            f"- [{Path(p).stem.replace('_', ' ')}]({Path(p).as_uri()}) (MLflow run "
            f"{self.run_id}, artifact `plots/{Path(p).name}`)"
            for p in self.pictures
        )
        return (
            f"# aepipe run: {self.dataset}\n\n| field | value |\n|---|---|\n{rows}\n\n"
            f"## Pictures\n\n{pictures or 'none'}\n"
        )


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
        warehouse=stores.warehouse,
        prefect_ui=ui["prefect"],
        mlflow_ui=ui["mlflow"],
        pictures=sorted(str(p) for p in Path(trained.plots_dir).glob("*.png")),
    )
    if FlowRunContext.get() is not None:
        key = f"aepipe-{summary.dataset.replace('_', '-').lower()}"
        create_markdown_artifact(
            summary.to_markdown(), key=f"{key}-run", description="aepipe run summary"
        )
        create_table_artifact(
            summary.table_rows(), key=f"{key}-summary", description="aepipe run summary table"
        )
    return summary


report = task(name="report")(summarize)
