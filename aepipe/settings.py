"""Where aepipe keeps its state: one project-local folder by default, every store overridable.

Everything (MLflow's SQLite database and artifacts, the Iceberg catalog and warehouse,
normalized data, Prefect's database) lives under one home folder, ``./.aepipe`` unless
``AEPIPE_HOME`` says otherwise. Each store can also point elsewhere on its own (an MLflow
tracking server, a Postgres catalog, an S3 warehouse) through the ``AEPIPE_*`` variables
below; that is how a deployment outgrows one machine without code changes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "AEPIPE_HOME"
ENV_TRACKING_URI = "AEPIPE_TRACKING_URI"
ENV_CATALOG_URI = "AEPIPE_CATALOG_URI"
ENV_WAREHOUSE = "AEPIPE_WAREHOUSE"
DEFAULT_HOME = ".aepipe"
NAMESPACE = "aepipe"


@dataclass(frozen=True)
class Stores:
    """Locations of every store aepipe reads or writes; build with :func:`stores`."""

    home: Path
    tracking_uri: str
    catalog_uri: str
    warehouse: str

    @property
    def artifact_root(self) -> Path:
        """Folder where MLflow runs of local experiments keep their artifacts."""
        return self.home / "mlartifacts"

    @property
    def data_dir(self) -> Path:
        """Folder for normalized Parquet datasets and their normalizer specs."""
        return self.home / "data"

    @property
    def models_dir(self) -> Path:
        """Folder for training outputs (weights, config, checkpoints) before MLflow logs them."""
        return self.home / "models"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME used by the CLI, so the Prefect UI shows the runs made here."""
        return self.home / "prefect"

    def ui_commands(self) -> dict[str, str]:
        """Shell commands that open the Prefect and MLflow UIs on these stores."""
        bin_dir = _bin_dir()
        return {
            "prefect": f"PREFECT_HOME={self.prefect_home} {bin_dir}prefect server start",
            "mlflow": (
                f"{bin_dir}mlflow ui --backend-store-uri {self.tracking_uri} "
                f"--default-artifact-root {self.artifact_root.as_uri()} --port 5000"
            ),
        }


def _bin_dir() -> str:
    """Prefix for console scripts of the running environment: ``.venv/bin/`` when in one."""
    folder = Path(sys.executable).parent
    if sys.prefix == sys.base_prefix:
        return ""
    try:
        return f"{folder.relative_to(Path.cwd())}{os.sep}"
    except ValueError:
        return f"{folder}{os.sep}"


def python_command() -> str:
    """How to call this environment's Python from the current folder."""
    return console_script("python")


def console_script(name: str) -> str:
    """How to call one of this environment's commands from the current folder."""
    return f"{_bin_dir()}{name}"


def stores(home: str | os.PathLike[str] | None = None) -> Stores:
    """Resolve the stores for ``home`` (default: ``$AEPIPE_HOME`` or ``./.aepipe``)."""
    root = Path(home if home is not None else os.environ.get(ENV_HOME, DEFAULT_HOME))
    root = root.expanduser().resolve()
    return Stores(
        home=root,
        tracking_uri=os.environ.get(ENV_TRACKING_URI) or f"sqlite:///{root / 'mlflow.db'}",
        catalog_uri=os.environ.get(ENV_CATALOG_URI) or f"sqlite:///{root / 'catalog.db'}",
        warehouse=os.environ.get(ENV_WAREHOUSE) or (root / "warehouse").as_uri(),
    )
