"""Source readers, one module a source kind, registered by name: ``source.format`` takes
these names, the CLI's help and ``docs/configuration.md`` list them, and ``auto`` asks each
reader in turn whether a path is its own. Names are known without importing any reader.

To add a source kind: a module here named after it, holding ``READER``, an instance of a
:class:`~tasks.io.readers.base.SourceReader` subclass, and a line in :data:`READERS`. No
code outside this package tells formats apart (``tests/test_layout.py`` checks it)."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.config import SourceConfig
    from tasks.io.readers.base import SourceReader

# the built-in reader's data sets (named here: settings are checked without importing it)
BUILTIN_SOURCES = ("digits",)
# name -> what it reads; in the order ``auto`` asks them
READERS: dict[str, str] = {
    "builtin": "a data set built into aepipe's dependencies ('digits': scikit-learn's)",
    "sql": "a SQL database table or query (source.path a URI, source.table or source.query)",
    "csv": "a CSV file (.csv, .tsv, .txt, .data, gzip too)",
    "jsonl": "a JSON-lines file (.jsonl, .ndjson, gzip too), one object a row",
    "parquet": "a Parquet file, a folder of them or a glob",
    "npz": "an NPZ file with an array 'X' (and 'y', the label)",
    "idx": "an IDX file (MNIST's format), labels from its sibling",
    "images": "a folder of images (subfolders name the labels)",
    "iceberg": "an Iceberg table (source.path its namespace.table, source.catalog its catalog)",
}


def reader_names() -> tuple[str, ...]:
    """Every source kind's name."""
    return tuple(READERS)


def get_reader(name: str) -> SourceReader:
    """The reader registered as ``name``."""
    if name not in READERS:
        raise ValueError(f"unknown source format {name!r}; available: {', '.join(READERS)}")
    return importlib.import_module(f"tasks.io.readers.{name}").READER


def detect_format(path: str) -> str:
    """The reader of ``path``: the first that claims its name, else, for a folder, the kind
    most of the data files in it (or its subfolders) are (the first listed, on a tie)."""
    from tasks.errors import ConfigError

    readers = [get_reader(name) for name in READERS]
    for reader in readers:
        if reader.claims(path):
            return reader.name
    from tasks.io.readers.base import exists, is_folder, is_remote, list_files

    if "://" not in path and not os.path.exists(path):
        raise ConfigError(f"source {path!r} does not exist")
    try:
        if is_remote(path) and not exists(path):
            raise ConfigError(f"source {path!r} does not exist (no object of that name or prefix)")
        remote_folder = is_remote(path) and is_folder(path)
    except OSError as err:
        raise ConfigError(f"cannot reach source {path!r}: {str(err).splitlines()[0]}") from None
    if remote_folder:  # an object-store prefix: its objects' names
        walk = [("", [], [os.path.basename(f) for f in list_files(path)])]
    else:
        walk = os.walk(path) if os.path.isdir(path) else []
    if remote_folder or os.path.isdir(path):
        held = dict.fromkeys((r for r in readers if r.folder_suffixes), 0)
        for _, _, names in walk:
            for n in names:  # (no Path: 70,000 files)
                suffix = os.path.splitext(n)[1].lower()
                for reader in held:
                    held[reader] += suffix in reader.folder_suffixes
        most = max(held.items(), key=lambda kv: kv[1], default=(None, 0))
        if most[1]:  # the kind most of its files are: a manifest.csv beside images is not it
            return most[0].name
        kinds = " and no ".join(
            f"{r.folder_noun} ({', '.join(sorted(r.folder_suffixes))})"
            for r in readers
            if r.folder_suffixes
        )
        raise ConfigError(f"source folder {path!r} holds no {kinds}, in it or its subfolders")
    raise ConfigError(
        f"cannot tell the format of source {path!r} from its name; set source.format to one "
        f"of {', '.join(READERS)}"
    )


def reader_of(src: SourceConfig) -> SourceReader:
    """The reader of a configured source (``auto`` resolved)."""
    return get_reader(src.resolved_format)
