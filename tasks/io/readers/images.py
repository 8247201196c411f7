"""Image folders: every image under a folder (subfolders name the labels when every image
is in one), decoded to one layout fixed by the first readable image, in chunks of files."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.io.arrays import IMAGE_SUFFIXES
from tasks.io.readers.arrays_base import ArrayReader
from tasks.io.readers.base import IncrementalUnavailable, IngestPart, ReadPlan, stat_lines

if TYPE_CHECKING:
    from tasks.config import SourceConfig
    from tasks.io.arrays import ArrayData


class ImagesReader(ArrayReader):
    """A folder of images, partitioned by chunks of ``partition_rows`` files."""

    name = "images"
    folder_suffixes = IMAGE_SUFFIXES
    folder_noun = "images"

    def listing(self, src: SourceConfig) -> list[str] | None:
        """The image files, relative to the folder, sorted."""
        from tasks.io import arrays

        return arrays.list_images(src.path)

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """A column per pixel value (from the first image, or the configured size and mode),
        ``label`` when every image sits in a subfolder."""
        from PIL import Image

        from ae_models.vocabulary import LABEL
        from tasks.errors import ConfigError
        from tasks.io import arrays

        path = Path(src.path)
        try:
            files = arrays.list_images(path) if listing is None else listing
            if not files:
                raise arrays.SourceReadError(f"no image files under {src.path!r}")
            if src.image_size is not None and src.image_mode != "auto":
                h, w = src.image_size
                channels = 1 if src.image_mode == "L" else 3
            else:
                with Image.open(path / files[0]) as img:
                    w, h = img.size
                    gray = img.mode in arrays.GRAY_MODES
                h, w = src.image_size or (h, w)
                mode = src.image_mode if src.image_mode != "auto" else ("L" if gray else "RGB")
                channels = 1 if mode == "L" else 3
        except (arrays.SourceReadError, OSError) as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        nested = all("/" in f for f in files)
        return arrays.pixel_columns((h, w, channels)) + ([LABEL] if nested else [])

    def plan(
        self,
        src: SourceConfig,
        partition_rows: int,
        listing: list[str] | None = None,
        since: str | None = None,
    ) -> ReadPlan:
        """Chunks of ``partition_rows`` files, and the layout every image decodes to."""
        if since is not None:
            raise IncrementalUnavailable("image folders are read whole")
        from tasks.io import arrays

        rel = self.listing(src) if listing is None else listing
        layout = arrays.probe_images(os.fspath(src.path), rel, src.image_size, src.image_mode)
        chunks = [rel[i : i + partition_rows] for i in range(0, len(rel), partition_rows)]
        parts = [IngestPart(i, chunk) for i, chunk in enumerate(chunks or [[]])]
        return ReadPlan(parts, layout, bool(rel) and all("/" in r for r in rel))

    def blocks(self, src: SourceConfig, part: IngestPart, plan: Any) -> Iterator[ArrayData]:
        """The partition's images as they decode."""
        from tasks.io import arrays

        yield from arrays.decode_image_blocks(src.path, part.files, plan.layout, plan.labelled)

    def has_label(self, src: SourceConfig, columns: list[str], labelled: bool) -> bool:
        """Every image sits in a subfolder."""
        return labelled

    def stat_digest(self, src: SourceConfig, listing: list[str] | None = None) -> str:
        """The image files' paths, sizes and modification times."""
        rel = self.listing(src) if listing is None else listing
        return stat_lines(src.path, [os.path.join(src.path, r) for r in rel])

    def write_bound(self, src: SourceConfig, plan: Any) -> int:
        """The decoded pixels, a byte each, twice: raw, and normalized (which keeps the bytes
        and their scale), each written by a partition and merged."""
        images = sum(len(p.files) for p in plan.parts)
        return 2 * images * math.prod(plan.layout.shape) * (1 + 1)


READER = ImagesReader()
