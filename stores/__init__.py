"""Where aepipe keeps its state: one project-local folder by default, every store overridable.

Everything (MLflow's SQLite database and artifacts, the Iceberg catalog and warehouse,
normalized data, Prefect's database) lives under one home folder, ``./.aepipe`` unless
``AEPIPE_HOME`` says otherwise. Each store can also point elsewhere on its own (an MLflow
tracking server, a Postgres or REST catalog, an S3 warehouse) through the ``AEPIPE_*``
variables below; that is how a deployment outgrows one machine without code changes:

- ``AEPIPE_TRACKING_URI``: MLflow (a server's ``http(s)://`` URL, or a database URI);
- ``AEPIPE_CATALOG``: the Iceberg catalog, as ``pyiceberg.catalog.load_catalog`` takes it: a
  SQL URI (``sqlite:///...``, ``postgresql+psycopg2://...``), a REST catalog's ``http(s)://``
  URL, or the name of a catalog configured in ``.pyiceberg.yaml`` (``AEPIPE_CATALOG_URI``, its
  older name, still works);
- ``AEPIPE_WAREHOUSE``: where the tables' files go (a folder, ``file://`` or ``s3://`` URL;
  S3's endpoint, region and credentials come from the usual ``AWS_*`` variables);
- ``AEPIPE_DATA``: ingested and normalized Parquet, the quarantine, checkpoints, model folders
  and Prefect's cached results (``data/``, ``models/``, ``results/`` under it): a folder (the
  default is the home), or ``s3://bucket/prefix``, which the home mirrors (``stores.data``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, model_serializer

ENV_HOME = "AEPIPE_HOME"
ENV_TRACKING_URI = "AEPIPE_TRACKING_URI"
ENV_CATALOG = "AEPIPE_CATALOG"
ENV_CATALOG_URI = "AEPIPE_CATALOG_URI"  # the older name of AEPIPE_CATALOG
ENV_WAREHOUSE = "AEPIPE_WAREHOUSE"
ENV_DATA = "AEPIPE_DATA"
ENV_MLFLOW_UI = "AEPIPE_MLFLOW_UI"  # where browsers reach the MLflow UI (links in reports)
DEFAULT_HOME = ".aepipe"
NAMESPACE = "aepipe"
MLFLOW_UI_PORT = 5000  # where `aepipe ui` starts the local MLflow UI


class Stores(BaseModel):
    """Locations of every store aepipe reads or writes; build with :func:`resolve_stores`.

    Serialized (say, as a Prefect flow parameter, which the Prefect database keeps), the
    URIs lose their user and password: credentials stay in the process environment.
    """

    model_config = ConfigDict(frozen=True)

    home: Path
    tracking_uri: str
    catalog_uri: str  # a SQL URI, a REST catalog's URL, or a catalog name (.pyiceberg.yaml)
    warehouse: str
    data: str  # a folder, or an object store (s3://bucket/prefix) that the home mirrors
    mlflow_ui: str = ""  # AEPIPE_MLFLOW_UI: the MLflow UI's address, when not the default

    def redact(self, text: str) -> str:
        """``text`` with the credentials of every store URI blanked out wherever they appear
        (the ``user:password@`` part, and the password on its own), for messages and traces
        that quote a URI."""
        for uri in (self.tracking_uri, self.catalog_uri, self.warehouse, self.data, self.mlflow_ui):
            parts = urlsplit(uri)
            if "@" in parts.netloc:
                safe = redact_uri(uri).split("://", 1)[-1].split("/", 1)[0]
                text = text.replace(parts.netloc, safe)
            if parts.password:
                text = text.replace(parts.password, "***")
        return text

    @model_serializer(mode="wrap")
    def _without_credentials(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("tracking_uri", "catalog_uri", "warehouse", "data", "mlflow_ui"):
            data[key] = redact_uri(data[key])
        return data

    @property
    def artifact_root(self) -> Path:
        """Folder where MLflow runs of local experiments keep their artifacts."""
        return self.home / "mlartifacts"

    @property
    def data_root(self) -> Path:
        """The local folder of the data store: ``AEPIPE_DATA`` when it is a folder, else the
        home, whose files the object store mirrors (see :mod:`stores.data`)."""
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(self.data)
        if parts.scheme == "file":
            return Path(unquote(parts.path))
        return self.home if parts.scheme else Path(self.data)

    @property
    def data_dir(self) -> Path:
        """Folder for normalized Parquet datasets and their normalizer specs."""
        return self.data_root / "data"

    @property
    def models_dir(self) -> Path:
        """Folder for training outputs (weights, config, checkpoints) before MLflow logs them."""
        return self.data_root / "models"

    def under_models(self, path: str | os.PathLike[str]) -> Path:
        """A configured path resolved the way aepipe writes it: relative ones under the
        models folder, ``~`` expanded, links and ``..`` resolved."""
        wanted = Path(path).expanduser()
        return (wanted if wanted.is_absolute() else self.models_dir / wanted).resolve()

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME used by the CLI, so the Prefect UI shows the runs made here."""
        return self.home / "prefect"

    @property
    def mlflow_ui_url(self) -> str:
        """Where a browser reaches the MLflow UI, for the links in reports: ``AEPIPE_MLFLOW_UI``
        when set (a UI behind a proxy, on another port or host), else the tracking server,
        else the local UI that :meth:`ui_commands` starts (port 5000)."""
        if self.mlflow_ui:
            return redact_uri(self.mlflow_ui).rstrip("/")
        if self.tracking_uri.startswith(("http://", "https://")):
            return redact_uri(self.tracking_uri).rstrip("/")
        return f"http://127.0.0.1:{MLFLOW_UI_PORT}"

    def ui_commands(self) -> dict[str, str]:
        """Shell commands that open the Prefect and MLflow UIs on these stores (a remote
        tracking server is its own UI: its address, credentials blanked out; a database URI
        that holds credentials is named by its setting, ``$AEPIPE_TRACKING_URI``)."""
        bin_dir = _bin_dir()
        backend = self.tracking_uri
        if redact_uri(backend) != backend:  # credentials: the same setting, never its value
            backend = f'"${ENV_TRACKING_URI}"'
        try:
            port = urlsplit(self.mlflow_ui).port if self.mlflow_ui else None
        except ValueError:  # no port aepipe can start a UI on: the address is all it says
            port = None
        mlflow = (
            f"{bin_dir}mlflow ui --backend-store-uri {backend} "
            f"--default-artifact-root {self.artifact_root.as_uri()} "
            f"--port {port or MLFLOW_UI_PORT}"
        )
        if self.tracking_uri.startswith(("http://", "https://")) or (
            self.mlflow_ui and port is None
        ):
            mlflow = f"open {self.mlflow_ui_url} in a browser"
        return {
            "prefect": f"PREFECT_HOME={self.prefect_home} {bin_dir}prefect server start",
            "mlflow": mlflow,
        }


def redact_uri(uri: str) -> str:
    """``uri`` with its user and password replaced by ``***``: safe for logs and messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return "<unparseable URI>"
    if parts.username is None and parts.password is None:
        return uri
    netloc = f"***@{parts.hostname or ''}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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


def resolve_stores(home: str | os.PathLike[str] | None = None) -> Stores:
    """Resolve the stores for ``home`` (default: ``$AEPIPE_HOME`` or ``./.aepipe``)."""
    root = Path(home if home is not None else os.environ.get(ENV_HOME, DEFAULT_HOME))
    root = root.expanduser().resolve()
    return Stores(
        home=root,
        tracking_uri=os.environ.get(ENV_TRACKING_URI) or f"sqlite:///{root / 'mlflow.db'}",
        catalog_uri=os.environ.get(ENV_CATALOG)
        or os.environ.get(ENV_CATALOG_URI)
        or f"sqlite:///{root / 'catalog.db'}",
        warehouse=os.environ.get(ENV_WAREHOUSE) or (root / "warehouse").as_uri(),
        data=_data_store(os.environ.get(ENV_DATA)) or str(root),
        mlflow_ui=os.environ.get(ENV_MLFLOW_UI, ""),
    )


def _data_store(value: str | None) -> str | None:
    """``AEPIPE_DATA`` as a URI or an absolute folder (``~`` expanded, relative resolved)."""
    if not value or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def catalog_kind(catalog: str) -> str:
    """How ``AEPIPE_CATALOG`` names its catalog: ``"rest"`` (an ``http(s)://`` URL),
    ``"sql"`` (a SQLAlchemy URI) or ``"named"`` (a catalog configured for pyiceberg)."""
    if catalog.startswith(("http://", "https://")):
        return "rest"
    return "sql" if "://" in catalog else "named"
