"""Pipeline configuration: one frozen pydantic model per concern, loaded from YAML or flags."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ae_models.training.config import TrainConfig
from tasks.errors import ConfigError
from tasks.io.readers import BUILTIN_SOURCES

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a whole data set name (fullmatch)
MAX_NAME = 64  # characters: a folder, a table and a model name are made of it
# MLflow's registered model names, kept to what is safe as a folder name too (fullmatch)
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Frozen):
    """Where the data comes from and which columns play which role."""

    path: str = Field(
        "digits",
        description="'digits' (built in), a CSV / JSON-lines / Parquet file, a Parquet or "
        "image folder, an IDX or NPZ file, or a database URI (postgresql://user@host/db; "
        "the password in PGPASSWORD)",
    )
    format: str = Field(
        "auto",
        description="the reader (tasks.io.readers); auto tells it from the path",
    )
    table: str | None = Field(None, description="SQL sources: the table (schema.table) to read")
    query: str | None = Field(None, description="SQL sources: a SELECT to read instead of a table")
    catalog: str | None = Field(
        None,
        description="Iceberg sources: the catalog (a SQL URI, a REST catalog's URL or a "
        "catalog named for pyiceberg); default: aepipe's own",
    )
    entity_id: str | None = Field(None, description="id column; default: source row number")
    timestamp: str | None = Field(
        None,
        description="event time column; default: ingest time. With it, each (entity id, "
        "event time) pair is a version of the entity: all are kept and scored",
    )
    partition_by: str | None = Field(
        None,
        description="SQL sources: a numeric column whose ranges split the read into "
        "partitions of about partition_rows rows (for the Dask runner; needs entity_id)",
    )
    watermark: str | None = Field(
        None,
        description="SQL sources: a column that only grows (an insert time, a serial id): a "
        "scoring run reads only the rows past the highest value the last one read",
    )
    watermark_lookback: str | None = Field(
        None,
        description="SQL sources with a watermark: read again the rows this far below the "
        "last read's highest value (a number, or a PostgreSQL interval such as '2 hours'), "
        "so rows committed late are still found; those already scored are dropped by the "
        "(id, time) comparison",
    )
    append_only: bool = Field(
        False,
        description="the source only ever gains rows (an event log): scoring then looks only "
        "past the last scored event time, and falls back to comparing every (id, time) pair "
        "when the counts show rows arrived late",
    )
    label: str | None = Field(None, description="kept aside, never a model input")
    label_kind: Literal["auto", "class", "anomaly"] = Field(
        "auto",
        description="what the label means: class (the codes' downstream accuracies) or "
        "anomaly (0/1, 1 an anomaly: AUROC and AP of the scores); auto: anomaly when 0/1 "
        "with at most 20% ones, else class; the run says what it decided",
    )
    include: list[str] | None = Field(None, description="feature columns; default: all others")
    exclude: list[str] = Field(default_factory=list, description="columns to leave out")
    delimiter: str = Field(
        "auto",
        description="CSV delimiter; auto: sniffed from the first lines among , ; tab | (the "
        "choice is logged). Spaces after it are skipped",
    )
    quote_char: str | None = Field('"', description="CSV quote character; null for none")
    header: bool = Field(True, description="CSV first line holds the column names")
    skip_initial_space: bool = Field(True, description="strip spaces around CSV values")
    na_values: list[str] = Field(
        default_factory=lambda: ["", "NA", "NaN", "?"], description="CSV cells read as missing"
    )
    encoding: str = Field(
        "utf-8",
        description="CSV text encoding (latin-1, cp1252, ...); rows with bytes "
        "that are not valid in it are quarantined",
    )
    max_levels: int = Field(20, ge=1, description="one-hot width cap per categorical column")
    image_size: tuple[int, int] | None = Field(
        None, description="(height, width) to resize images to; default: keep, all alike"
    )
    image_mode: Literal["auto", "L", "RGB"] = Field(
        "auto", description="auto: grayscale (L) if the first image is, else RGB"
    )
    labels_path: str | None = Field(None, description="IDX labels file (default: MNIST sibling)")
    max_quarantine_fraction: float = Field(
        0.01, ge=0, le=1, description="fail when more of the rows than this are quarantined"
    )
    fingerprint: Literal["stat", "content"] = Field(
        "stat",
        description="how a run tells the source is unchanged (and reuses its ingest): file "
        "paths, sizes and modification times, or a hash of the bytes",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from tasks.io.readers import reader_names

        if value != "auto" and value not in reader_names():
            raise ValueError(
                f"unknown source format {value!r}; one of auto, {', '.join(reader_names())}"
            )
        return value

    @property
    def resolved_format(self) -> str:
        """The name of this source's reader (:mod:`tasks.io.readers`); ``auto`` asks each."""
        if self.format != "auto":
            return self.format
        from tasks.io.readers import detect_format

        return detect_format(self.path)


class NormalizeConfig(_Frozen):
    """How numeric columns are scaled (fitted on the training split only)."""

    scaling: Literal["minmax", "standard", "robust"] = Field(
        "minmax",
        description="numeric columns: minmax (training range to [0, 1]), standard, robust "
        "(median / IQR)",
    )
    columns: dict[str, Literal["minmax", "standard", "robust"]] = Field(
        default_factory=dict, description="per-column scaling, overriding `scaling`"
    )
    log1p: list[str] = Field(default_factory=list, description="columns to log1p first")


class ModelSpec(_Frozen):
    """Which autoencoder variant to train and its variant-specific settings."""

    name: str = Field("deep", description="the autoencoder variant (ae_models' registry)")
    code_size: int | Literal["auto"] = Field(
        "auto",
        description="latent code width: the reduced features; auto: 16, or half the model's "
        "input width (one-hot levels counted) when that is narrower",
    )

    @field_validator("code_size")
    @classmethod
    def _code_size(cls, v: int | str) -> int | str:
        if v != "auto" and int(v) < 1:
            raise ValueError(f"code_size must be >= 1 or 'auto', got {v}")
        return v

    params: dict[str, Any] = Field(
        default_factory=dict,
        description="variant settings, e.g. {hidden: [64, 32], activation: relu}; default "
        "hidden widths: 256-128 for inputs narrower than 256, else halving from 256",
    )


class MaintainConfig(_Frozen):
    """Upkeep of the feature tables and the data store (the maintain-features flow,
    ``aepipe features --maintain``; runs prune their data set's superseded ingests)."""

    retain_days: float = Field(
        7,
        ge=0,
        description="expire snapshots older than this; time travel to any later time keeps "
        "working (the current snapshot and the last one before the cutoff are kept); "
        "trained-model folders and cached results older than this are removed too",
    )
    orphan_age_hours: float = Field(
        24,
        ge=0,
        description="delete unreferenced files (a killed writer's) only once this old: "
        "younger ones may belong to a write still in flight; the same for a killed run's "
        "lease on an ingest, its staged parts, and idle checkpoints",
    )
    compact_files: int = Field(
        4,
        ge=0,
        description="rewrite a model version's small data files (a scoring run's appends) as "
        "one file once it has this many, so reads stay fast; 0: never",
    )


class DriftConfig(_Frozen):
    """The drift check of every write, and what a detected drift sets off."""

    retrain: bool = Field(
        True,
        description="on drift, emit the Prefect event aepipe.drift.detected, which the "
        "reduce-features deployment's trigger answers with a retrain of the data set; "
        "false: record the drift only",
    )


class PipelineConfig(_Frozen):
    """Everything one ``reduce_features`` run needs."""

    dataset: str = Field(
        "digits",
        description="names the feature table and the model; default: the source file's name",
    )
    source: SourceConfig = Field(default_factory=SourceConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainConfig = Field(default_factory=TrainConfig)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of rows in the test split")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of rows in the validation split (early stopping)"
    )
    contamination: float | Literal["auto"] = Field(
        0.01,
        description="expected share of anomalies: the training-score quantile 1 - contamination "
        "is the threshold; 'auto' when unknown (median + 3.5 MAD of the log training scores)",
    )
    score: Literal["auto", "mse", "scaled_mse", "bce", "kl", "elbo", "hybrid", "ensemble"] = Field(
        "auto",
        description="anomaly score kind (ae_models.scoring.scorer); auto: ensemble for tables, "
        "bce for images; kl is bce less the target's own entropy",
    )
    explain_top_k: int | None = Field(
        None,
        ge=0,
        description="source columns contributing most to each row's score, kept in the "
        "feature table's top_columns; default 3 for tables, 0 (off) for images",
    )
    registered_model: str | None = Field(None, description="default: aepipe-<dataset>")
    promotion_metric: str = Field(
        "eval_mse", description="eval_mse (both models scored on the test split) or a run metric"
    )
    promotion_direction: Literal["auto", "min", "max"] = Field(
        "auto", description="auto: errors and losses lower is better, other metrics higher"
    )
    home: str | None = Field(None, description="state folder; default $AEPIPE_HOME or ./.aepipe")
    partition_rows: int = Field(
        500_000,
        ge=1,
        description="rows (or images) per ingest and scoring partition, one task each",
    )
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="runs the partition tasks: threads here, or a Dask cluster"
    )
    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster; default: a LocalCluster"
    )
    maintain: MaintainConfig = Field(default_factory=MaintainConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    train_deployment: str | None = Field(
        None,
        description="hand training to this Prefect deployment (e.g. "
        "'train-autoencoder/train-autoencoder' on the gpu pool) and wait; default: train here",
    )

    @field_validator("contamination")
    @classmethod
    def _contamination(cls, v: float | str) -> float | str:
        if v != "auto" and not 0 < float(v) < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5) or 'auto', got {v}")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v):  # fullmatch: '$' would let a trailing newline in
            raise ValueError(
                f"dataset name {v!r} must start with a letter and hold only letters, digits, '_'"
            )
        if len(v) > MAX_NAME:
            raise ValueError(f"dataset name is {len(v)} characters long; at most {MAX_NAME}")
        return v

    @field_validator("registered_model")
    @classmethod
    def _registered_model_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not MODEL_NAME_PATTERN.fullmatch(v) or ".." in v:
            raise ValueError(
                f"registered_model {v!r} must start with a letter or digit and hold only "
                "letters, digits, '_', '-' and single '.'"
            )
        if len(v) > 2 * MAX_NAME:
            raise ValueError(
                f"registered_model is {len(v)} characters long; at most {2 * MAX_NAME}"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_dataset(cls, data: Any) -> Any:
        """Without a ``dataset``, name it after the source file (``sales.csv`` -> ``sales``)."""
        if isinstance(data, dict) and "dataset" not in data:
            source = data.get("source") or {}
            path = source.get("path") if isinstance(source, dict) else None
            if isinstance(source, dict) and source.get("table"):
                path = source["table"]  # a database table: named after the table
            if path and path not in BUILTIN_SOURCES:
                data = {**data, "dataset": dataset_name_for(path)}
        return data

    @property
    def model_name(self) -> str:
        """Name of the registered model in MLflow."""
        return self.registered_model or f"aepipe-{self.dataset}"

    def flat_params(self) -> dict[str, str]:
        """Every setting flattened to ``section.key`` strings, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)

        walk("", self.model_dump(mode="json"))
        return out


def dataset_name_for(path: str) -> str:
    """A valid data set name from a source path: its stem, other characters as ``_``."""
    stem = Path(path.rstrip("/")).name
    for suffix in (".gz", ".csv", ".tsv", ".parquet", ".pq", ".npz", ".data", ".txt"):
        stem = stem.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_") or "data"
    return name if name[0].isalpha() else f"d_{name}"


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        message = f"{where}: {e['msg']}"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message += did_you_mean(where)
        parts.append(message)
    return "invalid config: " + "; ".join(parts)


def config_fields(model: type | None = None, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every leaf key of the config models in declaration order: its dotted name, its type
    annotation and its field (pydantic's ``FieldInfo``, or a dataclass ``Field`` in the
    training section). What the reference docs, the CLI's flags and ``did you mean`` walk."""
    model = model or PipelineConfig
    if dataclasses.is_dataclass(model):
        hints = get_type_hints(model)
        for f in dataclasses.fields(model):
            yield prefix + f.name, hints[f.name], f
        return
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and (
            issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
        ):
            yield from config_fields(annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, annotation, info


def did_you_mean(key: str) -> str:
    """``" (did you mean 'train.epochs'?)"`` for a dotted key close to a real one, else ''."""
    import difflib

    keys = [name for name, _, _ in config_fields()]
    sections = sorted({k.split(".")[0] for k in keys if "." in k})
    leaf = key.rsplit(".", 1)[-1]  # a right key in the wrong section: model.code_size
    close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:1]
    close = close or difflib.get_close_matches(key, keys + sections, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_config(data: dict[str, Any]) -> PipelineConfig:
    """Validate a config mapping; problems become a one-line ConfigError."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases: a config is a plain mapping, and a kilobyte of
    nested aliases ("billion laughs") expands to gigabytes once a value is walked."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{self.name} uses the YAML alias *{event.anchor} (line "
                f"{event.start_mark.line + 1}); aepipe configs take no aliases: write the "
                "values out"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, name: str = "<config>") -> Any:
    """Parse YAML text as :func:`yaml.safe_load` does, aliases refused (ConfigError)."""
    loader = _PlainLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config file, apply dotted-key ``overrides``, and validate."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = load_yaml(p.read_text(), str(p)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML: {err}".splitlines()[0]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, not {type(data).__name__}")
    return build_config(apply_overrides(data, overrides or {}))


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set ``{"model.code_size": 8}``-style dotted keys in a nested config mapping."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = value
    return out
