"""JSON-lines files (``.jsonl``, ``.ndjson``, gzip too; one, a folder or prefix of them, or a
glob): one object a line, nested objects
flattened to dotted names (``{"a": {"b": 1}}`` is column ``a.b``), read in blocks of lines
that parse on every core at once, values handed on as text for the table reader to type, as
a CSV's are. A field holding lists is refused unless excluded; a line that is not a JSON
object is set aside with its line number."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.io.readers.base import Parsed, Skipped
from tasks.io.readers.lines_base import LineFilesReader, line_blocks

if TYPE_CHECKING:
    from tasks.config import SourceConfig

SEPARATOR = "."  # between a nested object's name and its fields' names


def _flat(obj: dict, prefix: str = "") -> dict[str, Any]:
    """``obj`` with nested objects' fields as dotted names."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + SEPARATOR))
        else:
            out[name] = value
    return out


def _text(value: Any) -> str | None:
    """A JSON value as the text a CSV would hold: ``true``/``false``, numbers as written."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def _lines_table(block: bytes, columns: list[str]) -> Parsed:
    """Parse a block line by line (the slow path, for blocks whose values change type or
    hold lines that are not JSON objects): values as text, bad lines set aside."""
    text = block.decode("utf-8", "replace")
    values: dict[str, list[str | None]] = {c: [] for c in columns}
    ragged: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            ragged.append((f"not JSON ({err.msg})", line))
            continue
        if not isinstance(obj, dict):
            ragged.append((f"a JSON {type(obj).__name__}, not an object", line))
            continue
        flat = _flat(obj)
        for c in columns:
            values[c].append(_text(flat.get(c)))
    table = pa.table({c: pa.array(v, pa.string()) for c, v in values.items()})
    return Parsed(table, ragged, "\ufffd" in text)


def _fast_table(block: bytes, columns: list[str]) -> pa.Table:
    """Parse a block with Arrow's JSON reader (raises ArrowInvalid when a field changes type
    within it, or a line is not an object): the ``columns`` as text, missing ones null."""
    import pyarrow.json as pj

    table = pj.read_json(
        pa.BufferReader(block),
        read_options=pj.ReadOptions(use_threads=False, block_size=len(block) + 1),
    )
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()  # struct fields become "a.b"
    out = {}
    for c in columns:
        if c in table.column_names and not pa.types.is_nested(table[c].type):
            out[c] = table[c].combine_chunks().cast(pa.string())  # true/false, numbers
        else:
            out[c] = pa.nulls(table.num_rows, pa.string())  # absent, or lists (excluded)
    return pa.table(out)


class JsonLinesReader(LineFilesReader):
    """JSON-lines files: one partition, or with an entity id files and byte ranges of about
    ``partition_rows`` rows; blocks parsed in parallel."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
    folder_suffixes = frozenset({".jsonl", ".ndjson"})
    folder_noun = "JSON-lines files"
    text_values = True

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The fields of the first file's first megabyte's objects, flattened, in the order
        first seen; fields holding lists refused unless excluded."""
        from tasks.errors import ConfigError

        path = self.first_file(src)
        names: dict[str, None] = {}
        lists: dict[str, None] = {}
        try:
            for block in line_blocks(path, False, src.encoding, sample=True):
                if isinstance(block, Skipped):
                    continue
                for line in block.decode("utf-8", "replace").splitlines():
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(obj, dict):
                        for key, value in _flat(obj).items():
                            names.setdefault(key)
                            if isinstance(value, list):
                                lists.setdefault(key)
                break
        except OSError as err:
            raise ConfigError(f"cannot read {path!r}: {err}") from None
        if not names:
            raise ConfigError(f"source {path!r} holds no JSON objects in its first lines")
        refused = [c for c in lists if c not in src.exclude]
        if refused:
            raise ConfigError(
                f"field(s) {refused} of {path!r} hold lists; aepipe reads one value a "
                "column: add them to source.exclude, or flatten them into fields"
            )
        return list(names)

    def parse(self, item: Any, columns: list[str], src: SourceConfig) -> Parsed:
        """A block's objects as text columns: Arrow's parser, or line by line when a field
        changes type within the block or a line is not an object."""
        try:
            item.decode("utf-8")
            return Parsed(_fast_table(item, columns), [], False)
        except (pa.ArrowInvalid, UnicodeDecodeError, pa.ArrowNotImplementedError):
            return _lines_table(item, columns)


READER = JsonLinesReader()
