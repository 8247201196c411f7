"""SQL databases (PostgreSQL), read through ADBC's Arrow-native driver: the rows of
``source.table`` or ``source.query`` arrive as Arrow record batches streamed from the server
(no row-by-row cursor, bounded memory), then are typed like any table's.

``source.path`` is the database URI without its password (``postgresql://user@host/db``):
the password comes from ``PGPASSWORD`` or ``~/.pgpass``, as libpq reads them, so it is never
in a run's settings, its MLflow parameters or its Prefect flow-run parameters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa

from tasks.io.readers.base import IngestPart, ReadPlan, SourceReader

if TYPE_CHECKING:
    from tasks.config import SourceConfig

SCHEMES = ("postgresql", "postgres")
BATCH_BYTES = 8 << 20  # what the driver gathers into one record batch


def _quoted(name: str) -> str:
    """A (schema-qualified) table name as quoted SQL identifiers."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def source_query(
    src: SourceConfig, columns: list[str] | None = None, part: IngestPart | None = None
) -> str:
    """The SELECT that reads the source: its table, or its query, wrapped; ``columns``
    only, when given; a partition's watermark and ``source.partition_by`` ranges
    (:meth:`SqlReader.plan`), when it has them."""
    inner = f"SELECT * FROM {_quoted(src.table)}" if src.table else src.query
    what = ", ".join(_quoted(c) for c in columns) if columns else "*"
    sql = f"SELECT {what} FROM ({inner}) AS aepipe_source"
    spec = part_spec(part)
    where = []
    if spec.get("watermark"):
        since, upto = spec["watermark"]
        w = _quoted(src.watermark)
        if since is not None:
            where.append(f"{w} > {_literal(since)} AND {w} <= {_literal(upto)}")
        else:  # the whole source up to the marker (rows without a watermark too)
            where.append(f"{w} IS NULL OR {w} <= {_literal(upto)}")
    if spec.get("range"):
        low, high, last = spec["range"]
        c = f"{_quoted(src.partition_by)}::float8"
        bounds = [f"{c} >= {low!r}"] if low is not None else []
        bounds += [f"{c} < {high!r}"] if high is not None else []
        cond = " AND ".join(bounds) or "TRUE"
        where.append(f"({cond}) OR {c} IS NULL" if last else cond)
    if where:
        sql += " WHERE " + " AND ".join(f"({w})" for w in where)
    return sql


PART_PREFIX = "sql-part\n"  # a partition's files[0]: the ranges it reads, as JSON


def part_spec(part: IngestPart | None) -> dict:
    """The ranges a partition reads (empty: the whole source)."""
    if part is None or not part.files or not part.files[0].startswith(PART_PREFIX):
        return {}
    return json.loads(part.files[0].removeprefix(PART_PREFIX))


def _part(index: int, spec: dict) -> IngestPart:
    return IngestPart(index, [PART_PREFIX + json.dumps(spec, sort_keys=True)])


def _literal(value: str) -> str:
    """A SQL text literal (PostgreSQL casts it to the compared column's type)."""
    return "'" + value.replace("'", "''") + "'"


def driver_uri(path: str) -> str:
    """``path`` as libpq takes it (a SQLAlchemy ``+driver`` suffix dropped)."""
    scheme, rest = path.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


class SqlReader(SourceReader):
    """A table or query of a PostgreSQL database, read through ADBC."""

    name = "sql"

    def claims(self, path: str) -> bool:
        """PostgreSQL URIs."""
        return path.split("://", 1)[0].split("+", 1)[0].lower() in SCHEMES and "://" in path

    def check_settings(self, src: SourceConfig) -> None:
        """One of table and query; no password in the URI; partitions need ids."""
        from tasks.errors import ConfigError

        if src.watermark_lookback and not src.watermark:
            raise ConfigError("source.watermark_lookback needs source.watermark")
        if src.partition_by and not src.entity_id:
            raise ConfigError(
                "source.partition_by needs source.entity_id: a database's rows have no "
                "stable numbers to name them by when they are read in parts"
            )
        if bool(src.table) == bool(src.query):
            raise ConfigError(
                "a SQL source needs source.table or source.query (one of them), beside "
                "source.path, the database URI"
            )
        if urlsplit(src.path).password:
            raise ConfigError(
                "source.path holds a password: remove it from the URI and set PGPASSWORD "
                "(or ~/.pgpass) instead, so it is never stored with the run's settings"
            )

    def connect(self, src: SourceConfig) -> Any:
        """An ADBC connection; a ConfigError naming the database (credentials never
        echoed) when it cannot be made."""
        from adbc_driver_postgresql import dbapi

        from stores import redact_uri
        from tasks.errors import ConfigError

        try:
            return dbapi.connect(driver_uri(src.path))
        except dbapi.Error as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"cannot connect to the source database {redact_uri(src.path)}: {first}"
            ) from None

    def _run(self, src: SourceConfig, sql: str) -> pa.Table:
        """A small query's result; a ConfigError with the database's own first line."""
        from adbc_driver_postgresql import dbapi

        from tasks.errors import ConfigError

        with self.connect(src) as conn, conn.cursor() as cur:
            try:
                cur.execute(sql)
                return cur.fetch_arrow_table()
            except dbapi.Error as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                what = f"table {src.table!r}" if src.table else "source.query"
                raise ConfigError(f"cannot read {what} of the source database: {first}") from None

    def marker(self, src: SourceConfig) -> str | None:
        """The watermark column's highest value (as text), when ``source.watermark`` names
        one: later runs read the rows past it."""
        if not src.watermark:
            return None
        w = _quoted(src.watermark)
        top = self._run(src, f"SELECT max({w})::text AS m FROM ({source_query(src)}) AS s")
        return top["m"][0].as_py()

    def plan(
        self,
        src: SourceConfig,
        partition_rows: int,
        listing: list[str] | None = None,
        since: str | None = None,
    ) -> ReadPlan:
        """One streamed query, or with ``source.partition_by`` one a range of that column
        (about ``partition_rows`` rows each, for the Dask runner); with a watermark, bounded
        by its highest value now (rows written meanwhile are the next run's), and with
        ``since`` the rows past it only."""
        from tasks.io.readers.base import IncrementalUnavailable

        spec: dict = {}
        upto = None
        if src.watermark:
            upto = self.marker(src)
            if upto is not None:  # (None: an empty table, said by the check)
                spec["watermark"] = [since, upto]
        elif since is not None:
            raise IncrementalUnavailable("set source.watermark to read only new rows")
        if since is not None and upto is not None and src.watermark_lookback:
            spec["watermark"] = [self._looked_back(src, since), upto]
        whole = _part(0, spec) if spec else IngestPart(0, [src.path])
        if since is not None and upto is not None:
            count = self._run(
                src, f"SELECT count(*) AS n FROM ({source_query(src, None, whole)}) c"
            )
            if count["n"][0].as_py() == 0:
                raise IncrementalUnavailable(f"no row has {src.watermark} past {since}")
        parts = self._ranges(src, spec, whole, partition_rows) if src.partition_by else [whole]
        return ReadPlan(parts, marker=upto)

    def _looked_back(self, src: SourceConfig, since: str) -> str | None:
        """``since`` less ``source.watermark_lookback``, computed by the database in the
        watermark column's type (None: no row is at or below ``since`` any more)."""
        lookback = src.watermark_lookback or ""
        try:
            float(lookback)
            delta = lookback
        except ValueError:
            delta = f"interval {_literal(lookback)}"
        w = _quoted(src.watermark)
        low = self._run(
            src,
            f"SELECT (max({w}) - {delta})::text AS m FROM ({source_query(src)}) AS s "
            f"WHERE {w} <= {_literal(since)}",
        )
        return low["m"][0].as_py()

    def _ranges(
        self, src: SourceConfig, spec: dict, whole: IngestPart, partition_rows: int
    ) -> list[IngestPart]:
        """Equal-width ranges of ``source.partition_by`` holding about ``partition_rows``
        rows each (rows where it is null go with the last)."""
        c = f"{_quoted(src.partition_by)}::float8"
        found = self._run(
            src,
            f"SELECT min({c}) AS lo, max({c}) AS hi, count(*) AS n "
            f"FROM ({source_query(src, None, whole)}) AS s",
        ).to_pylist()[0]
        n, low, high = found["n"], found["lo"], found["hi"]
        k = max(1, -(-n // partition_rows))
        if k == 1 or low is None or high <= low:
            return [whole]
        step = (high - low) / k
        cuts = [None] + [low + i * step for i in range(1, k)] + [None]
        return [_part(i, {**spec, "range": [cuts[i], cuts[i + 1], i == k - 1]}) for i in range(k)]

    def check_exists(self, src: SourceConfig) -> None:
        """The database answers and the table or query gives at least one row."""
        from tasks.errors import ConfigError

        self.check_settings(src)
        if self._run(src, f"{source_query(src)} LIMIT 1").num_rows == 0:
            what = f"table {src.table!r}" if src.table else "source.query"
            raise ConfigError(f"{what} of the source database has no rows")

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The result's column names; columns of a type aepipe cannot encode (bytes, arrays,
        composite values) refused unless excluded."""
        from tasks.errors import ConfigError
        from tasks.io.tables import type_class

        schema = self._run(src, f"{source_query(src)} LIMIT 0").schema
        readable = ("number", "boolean", "text", "time", "null")
        refused = [
            f"{f.name} ({f.type})"
            for f in schema
            if type_class(readable_type(f.type)) not in readable and f.name not in src.exclude
        ]
        if refused:
            raise ConfigError(
                f"column(s) {', '.join(refused)} of the source database hold values aepipe "
                "cannot encode; add them to source.exclude, or cast them in source.query"
            )
        return list(schema.names)

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """The ``needed`` columns' rows in record batches as the server sends them
        (decimals as float64); ``sample``: the first batch of at most 65,536 rows."""
        sql = source_query(src, needed, part) + (" LIMIT 65536" if sample else "")
        with self.connect(src) as conn, conn.cursor() as cur:
            cur.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)}
            )
            cur.execute(sql)
            for batch in cur.fetch_record_batch():
                yield _numbers_as_floats(batch)

    def files(self, src: SourceConfig) -> list[str]:
        """None: a database."""
        return []

    def stat_digest(self, src: SourceConfig, listing: list[str] | None = None) -> str:
        """The row count (and the watermark's highest value): a run on a table that gained
        or lost rows ingests it again (rows changed in place without moving the watermark
        need ``source.fingerprint: content``)."""
        count = self._run(src, f"SELECT count(*) AS n FROM ({source_query(src)}) AS counted")
        return f"{redact_rows(src)} rows {count['n'][0].as_py()} upto {self.marker(src)}"

    def content_digest(self, src: SourceConfig) -> str:
        """SHA-256 of every row, as Arrow sends them (one full read)."""
        h = hashlib.sha256()
        for batch in self.items(src, None, self.columns(src)):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            h.update(sink.getvalue())
        return h.hexdigest()

    def merged_digest(self, src: SourceConfig, part_digests: list[str]) -> str:
        """The partitions' digests (what each read: its ranges and rows' count) and what the
        source is (the database, the table or query), without asking the database again."""
        joined = "\n".join([redact_rows(src), *part_digests])
        return hashlib.sha256(joined.encode()).hexdigest()

    def write_bound(self, src: SourceConfig, plan: Any) -> int:
        """Rows times columns times 16 bytes, twice (the part and the merged copy)."""
        count = self._run(src, f"SELECT count(*) AS n FROM ({source_query(src)}) AS counted")
        return 2 * int(count["n"][0].as_py()) * max(1, len(plan.info.columns)) * 16


def redact_rows(src: SourceConfig) -> str:
    """What the source reads, without credentials: the URI and the table or query."""
    from stores import redact_uri

    return f"{redact_uri(src.path)} {src.table or src.query}"


def _is_numeric(t: pa.DataType) -> bool:
    """A decimal, or PostgreSQL's ``numeric`` as the driver sends it (an opaque extension
    type over its text)."""
    return pa.types.is_decimal(t) or getattr(t, "type_name", None) == "numeric"


def readable_type(t: pa.DataType) -> pa.DataType:
    """The type a column arrives as once :func:`_numbers_as_floats` has read it."""
    return pa.float64() if _is_numeric(t) else t


def _numbers_as_floats(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Decimal columns (PostgreSQL's numeric) as float64, the type a table's numbers take."""
    if not any(_is_numeric(t) for t in batch.schema.types):
        return batch
    columns = []
    for c in batch.columns:
        if _is_numeric(c.type):
            c = (c.storage if isinstance(c, pa.ExtensionArray) else c).cast(pa.float64())
        columns.append(c)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


READER = SqlReader()
