"""What the array readers (images, IDX, NPZ, the built-in digits) share: they take no table
settings, read their label from the source itself, and their digest is of the decoded rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tasks.io.readers.base import SourceReader

if TYPE_CHECKING:
    from tasks.config import SourceConfig


class ArrayReader(SourceReader):
    """A source of numeric arrays: a model input per column, the label ``label`` if any."""

    kind: ClassVar = "array"

    def check_settings(self, src: SourceConfig) -> None:
        """Role and column settings are for tables."""
        from tasks.errors import ConfigError
        from tasks.io.readers.base import is_remote

        if is_remote(src.path):
            raise ConfigError(
                f"{self.name} sources are read from this machine's files; in an object store "
                "aepipe reads Parquet, CSV and JSON-lines files"
            )
        if src.entity_id or src.timestamp or src.include is not None or src.exclude:
            raise ConfigError(
                f"source.entity_id/timestamp/include/exclude apply to tables, not {self.name} "
                "sources"
            )

    def label(self, src: SourceConfig, columns: list[str]) -> str | None:
        """``label`` when the source holds labels."""
        from ae_models.vocabulary import LABEL

        return LABEL if LABEL in columns else None

    def has_label(self, src: SourceConfig, columns: list[str], labelled: bool) -> bool:
        """Whether the source holds labels."""
        from ae_models.vocabulary import LABEL

        return LABEL in columns

    def merged_digest(self, src: SourceConfig, part_digests: list[str]) -> str:
        """The partitions' digests of their decoded rows, joined."""
        from tasks.io.sources import json_digest

        return part_digests[0] if len(part_digests) == 1 else json_digest(part_digests)
