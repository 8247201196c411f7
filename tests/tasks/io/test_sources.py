"""Array sources: image folders, IDX and NPZ, with bad rows quarantined and counted."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ae_models.preprocessing.tensor_column import batch_matrix
from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.io.arrays import SourceReadError, npz_x_shape, read_idx, read_npz
from tasks.normalize import normalize_dataset


def cfg(path: Path | str, **source):
    return build_config(
        {"dataset": "imgs", "source": {"path": str(path), **source}, "model": {"code_size": 4}}
    )


def write_images(folder: Path, n: int, size=(10, 12), mode="L", classes=("a", "b")) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / classes[i % len(classes)]
        sub.mkdir(parents=True, exist_ok=True)
        shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(sub / f"{i}.png")


def test_image_folder_labels_ids_and_scaling(tmp_path, tmp_stores) -> None:
    write_images(tmp_path / "imgs", 20)
    ingested = ingest_source(cfg(tmp_path / "imgs"), tmp_stores)
    assert ingested.rows == 20 and ingested.quarantined == 0 and ingested.pixel_scale == 255.0
    raw = pq.read_table(ingested.path).to_pandas()
    assert sorted(set(raw["label"])) == ["a", "b"]
    assert raw["entity_id"].iloc[0] == "a/0.png" and len(ingested.features) == 120
    data = normalize_dataset(ingested, cfg(tmp_path / "imgs"))
    table = batch_matrix(pq.read_table(data.path))
    assert table.min() >= 0 and table.max() <= 1 and table.max() > 0.9


def decode_all(folder, rel, layout, workers):
    """Every block of a decode, joined, and the digest of the blocks."""
    from tasks.io import arrays as readers
    from tasks.io.sources import ArrayDigest

    blocks = list(readers.decode_image_blocks(str(folder), rel, layout, True, workers=workers))
    digest = ArrayDigest()
    for b in blocks:
        digest.update(b)
    rows = np.concatenate([b.features for b in blocks])
    ids = [i for b in blocks for i in b.ids]
    labels = np.concatenate([b.labels for b in blocks])
    return rows, ids, labels, [q for b in blocks for q in b.quarantine], len(blocks), digest


def test_decoding_in_processes_matches_decoding_in_thread(tmp_path, monkeypatch) -> None:
    """Big partitions decode in forked processes, in blocks: rows, ids and quarantine reasons
    must come back in source order, whichever block a bad image falls in, and the digest of
    the rows must not depend on where the blocks split them."""
    from tasks.io import arrays as readers

    write_images(tmp_path / "imgs", 23)
    (tmp_path / "imgs" / "b" / "7x.png").write_bytes(b"\x89PNG truncated")
    Image.new("L", (3, 3)).save(tmp_path / "imgs" / "a" / "small.png")
    rel = readers.list_images(tmp_path / "imgs")
    layout = readers.probe_images(str(tmp_path / "imgs"), rel, None, "auto")
    one = decode_all(tmp_path / "imgs", rel, layout, workers=1)
    monkeypatch.setattr(readers, "PROCESS_DECODE_MIN", 2)
    pool, n = readers._decode_pool(len(rel), 2)
    assert pool is not None and n == 2  # the process path really runs
    pool.shutdown()
    many = decode_all(tmp_path / "imgs", rel, layout, workers=2)
    assert (one[4], many[4]) == (1, 7)  # one block in the thread; 4 a process, 25 rows
    np.testing.assert_array_equal(one[0], many[0])
    assert one[1] == many[1] and len(many[1]) == 23
    np.testing.assert_array_equal(one[2], many[2])
    assert one[3] == many[3]
    assert [loc for loc, _ in many[3]] == ["a/small.png", "b/7x.png"]
    assert "expected 12x10" in many[3][0][1]
    assert many[3][1][1] == "cannot decode image: not an image format PIL reads, or corrupt"
    assert one[5].hexdigest() == many[5].hexdigest()


def test_odd_sizes_and_modes(tmp_path, tmp_stores) -> None:
    folder = tmp_path / "imgs"
    write_images(folder, 10, mode="RGB")
    Image.new("CMYK", (12, 10), (0, 50, 100, 0)).save(folder / "a" / "cmyk.jpg")
    Image.new("P", (12, 10)).save(folder / "b" / "palette.png")
    Image.new("RGB", (30, 30)).save(folder / "a" / "big.png")
    # without image_size the odd-sized image is quarantined (1 of 13 exceeds 1 %)
    with pytest.raises(ConfigError, match=r"1 of 13 rows \(7.7%\).*quarantine.parquet"):
        ingest_source(cfg(folder), tmp_stores)
    allowed = cfg(folder, max_quarantine_fraction=0.1)
    ingested = ingest_source(allowed, tmp_stores)
    assert ingested.rows == 12 and ingested.quarantined == 1
    quarantine = pq.read_table(ingested.quarantine_path).to_pylist()
    assert quarantine == [
        {
            "location": "a/big.png",
            "reason": "image is 30x30, expected 12x10; set source.image_size to resize",
        }
    ]
    resized = ingest_source(cfg(folder, image_size=(10, 12)), tmp_stores)
    assert resized.rows == 13 and resized.quarantined == 0
    assert len(resized.features) == 10 * 12 * 3  # RGB kept from the first image


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_png_in_the_mnist_sample_is_quarantined(
    shared_datasets, tmp_path, tmp_stores, damage
) -> None:
    folder = tmp_path / "sample"
    shutil.copytree(shared_datasets / "mnist-png-sample", folder)
    victim = sorted((folder / "3").iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not a png" * 10)
    ingested = ingest_source(cfg(folder), tmp_stores)
    assert ingested.rows == 499 and ingested.quarantined == 1
    assert ingested.rows + ingested.quarantined == 500
    row = pq.read_table(ingested.quarantine_path).to_pylist()[0]
    assert row["location"] == f"3/{victim.name}" and row["reason"].startswith("cannot decode")
    labels = pq.read_table(ingested.path, columns=["label"]).column("label").to_pylist()
    assert sorted(set(labels)) == [str(d) for d in range(10)]


def test_mnist_idx_rows_and_mean(shared_datasets, tmp_stores) -> None:
    path = shared_datasets / "mnist" / "train-images-idx3-ubyte.gz"
    config = cfg(path)
    ingested = ingest_source(config, tmp_stores)
    assert ingested.rows == 60000 and ingested.has_label
    data = normalize_dataset(ingested, config)
    x = batch_matrix(pq.read_table(data.path))
    assert abs(x.mean() - 33.318 / 255) < 1e-4
    test = ingest_source(cfg(shared_datasets / "mnist" / "t10k-images-idx3-ubyte.gz"), tmp_stores)
    assert test.rows == 10000


def test_adbench_npz(shared_datasets, tmp_stores) -> None:
    for path in sorted((shared_datasets / "adbench").glob("*.npz")):
        ingested = ingest_source(cfg(path), tmp_stores)
        y = np.load(path)["y"]
        assert ingested.rows == len(y) and ingested.pixel_scale is None
        raw = pq.read_table(ingested.path, columns=["label"]).column("label").to_numpy()
        assert int(raw.sum()) == int(y.sum())


def _idx(path: Path, payload: bytes, gz: bool = True) -> Path:
    (gzip.open if gz else open)(path, "wb").write(payload)
    return path


def test_idx_errors_are_named(tmp_path) -> None:
    header = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 2, 3, 3)
    good = _idx(tmp_path / "ok-images-idx3-ubyte.gz", header + bytes(18))
    assert read_idx(good).shape == (2, 3, 3)
    raw = _idx(tmp_path / "raw-images-idx3-ubyte", header + bytes(18), gz=False)
    assert read_idx(raw).shape == (2, 3, 3)
    with pytest.raises(SourceReadError, match="bad magic number"):
        read_idx(_idx(tmp_path / "magic.idx.gz", b"\x01\x02" + header[2:] + bytes(18)))
    with pytest.raises(SourceReadError, match=r"declares shape \(2, 3, 3\) \(34 bytes"):
        read_idx(_idx(tmp_path / "short.idx.gz", header + bytes(5)))
    truncated = tmp_path / "cut.idx.gz"
    truncated.write_bytes(gzip.compress(header + bytes(18))[:-12])
    with pytest.raises(SourceReadError, match=r"declares shape|cannot read IDX file"):
        read_idx(truncated)


def test_declared_sizes_are_checked_before_anything_is_allocated(tmp_path) -> None:
    """Issue 47.4: a 16-byte IDX header declaring 1 x 30000 x 30000 (900 M pixels) reached
    5.6 GB in validation; a small gzip file that expands far beyond its header's shape was
    decompressed whole. Both are refused from the header, the file's size and gzip's
    recorded size, before any pixel column or buffer is made; so is a 9000 x 9000 image."""
    from tasks.io.arrays import MAX_ROW_VALUES, idx_shape, pixel_columns

    huge = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 1, 30000, 30000)
    for gz in (False, True):
        path = _idx(tmp_path / ("huge-images-idx3-ubyte" + ".gz" * gz), huge, gz=gz)
        with pytest.raises(SourceReadError, match=r"declares shape \(1, 30000, 30000\)"):
            idx_shape(path)
        with pytest.raises(SourceReadError, match="declares shape"):
            read_idx(path)
    small = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 1, 10, 10)
    bomb = _idx(tmp_path / "bomb-images-idx3-ubyte.gz", small + bytes(50_000_000))
    assert bomb.stat().st_size < 100_000  # 50 MB of zeros, compressed
    with pytest.raises(SourceReadError, match="holds 50,000,016"):
        read_idx(bomb)
    honest_but_wide = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 1, 5000, 5000)
    with pytest.raises(SourceReadError, match="25,000,000 values a row; aepipe takes at most"):
        idx_shape(_idx(tmp_path / "wide.idx", honest_but_wide + bytes(25_000_000), gz=False))
    with pytest.raises(SourceReadError, match="an image of 9000 x 9000 declares 81,000,000"):
        pixel_columns((9000, 9000, 1))
    assert len(pixel_columns((28, 28, 1))) == 784 and MAX_ROW_VALUES >= 1024 * 1024


def test_npz_errors_are_named(tmp_path) -> None:
    np.savez(tmp_path / "no_x.npz", A=np.zeros((2, 2)))
    with pytest.raises(SourceReadError, match="has no array 'X'"):
        read_npz(tmp_path / "no_x.npz")
    np.savez(tmp_path / "bad_y.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(SourceReadError, match="'y' has 2 rows, 'X' has 3"):
        read_npz(tmp_path / "bad_y.npz")


PNG_KINDS = {
    "gray": lambda a: Image.fromarray(a[..., 0]),
    "rgb": lambda a: Image.fromarray(a),
    "rgba": lambda a: Image.fromarray(np.dstack([a, a[..., :1]])),
    "gray+alpha": lambda a: Image.fromarray(a[..., 0]).convert("LA"),
    "palette": lambda a: Image.fromarray(a).convert("P"),
    "1-bit": lambda a: Image.fromarray(a[..., 0]).convert("1"),
    "16-bit": lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 257),
}


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_fast_png_decoding_gives_what_pil_gives(tmp_path, monkeypatch, mode) -> None:
    """libspng decodes the plain 8-bit PNGs, PIL the rest; every kind of PNG (and an
    interlaced one) comes out as PIL's own decoding and conversion gives it."""
    from tasks.io import arrays as readers

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    folder = tmp_path / "kinds"
    folder.mkdir()
    for name, make in PNG_KINDS.items():
        make(pixels).save(folder / f"{name}.png")
    PNG_KINDS["gray"](pixels).save(folder / "interlaced.png", interlace=1)
    rel = readers.list_images(folder)
    pil_calls = []
    real_pil = readers._decode_pil
    monkeypatch.setattr(
        readers, "_decode_pil", lambda data, *a: pil_calls.append(1) or real_pil(data, *a)
    )
    layout = readers.ImageLayout(mode, (10, 12), False)
    (block,) = readers.decode_image_blocks(str(folder), rel, layout, False, workers=1)
    assert block.ids == rel and not block.quarantine
    for r, row in zip(rel, block.features, strict=True):
        with Image.open(folder / r) as img:
            expected = np.asarray(img.convert(mode), np.uint8).reshape(-1)
        np.testing.assert_array_equal(row, expected, err_msg=r)
    fast = 2 if mode == "L" else 1  # gray + interlaced gray, or rgb
    assert len(pil_calls) == len(rel) - fast


def test_pixels_normalized_by_the_ingest_equal_the_two_pass_normalize(tmp_path, tmp_stores) -> None:
    """Fixed-scale sources are normalized while they are read (block by block, partition by
    partition); the file must be the one the general two-pass normalize writes."""
    import dataclasses

    write_images(tmp_path / "imgs", 30)
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG cut")
    c = cfg(tmp_path / "imgs", max_quarantine_fraction=0.1).model_copy(update={"partition_rows": 7})
    ingested = ingest_source(c, tmp_stores)
    assert ingested.quarantined == 1 and ingested.split_rows is not None
    one_pass = normalize_dataset(ingested, c)
    assert one_pass.split_rows == ingested.split_rows and one_pass.rows == 30
    written = pq.read_table(one_pass.path)
    assert pq.ParquetFile(one_pass.path).metadata.num_row_groups > 1  # merged partitions
    two_pass = normalize_dataset(dataclasses.replace(ingested, split_rows=None), c)
    assert two_pass.split_rows == one_pass.split_rows
    assert two_pass.features == one_pass.features
    assert pq.read_table(two_pass.path).equals(written)


def test_a_png_cut_after_its_header_is_quarantined_and_leaves_no_pixels(tmp_path) -> None:
    """A PNG whose header passes the fast path's check but whose data is cut: libspng fails
    part-way, PIL says why, and no half-decoded pixels reach the next row."""
    from tasks.io import arrays as readers

    write_images(tmp_path / "imgs", 4)
    whole = (tmp_path / "imgs" / "a" / "0.png").read_bytes()
    (tmp_path / "imgs" / "a" / "0.png").write_bytes(whole[: len(whole) // 2])
    rel = readers.list_images(tmp_path / "imgs")
    layout = readers.probe_images(str(tmp_path / "imgs"), rel, None, "auto")
    (block,) = readers.decode_image_blocks(str(tmp_path / "imgs"), rel, layout, True, workers=1)
    assert [loc for loc, _ in block.quarantine] == ["a/0.png"]
    assert block.quarantine[0][1].startswith("cannot decode image:")
    assert block.ids == ["a/2.png", "b/1.png", "b/3.png"]
    for r, row in zip(block.ids, block.features, strict=True):
        with Image.open(tmp_path / "imgs" / r) as img:
            np.testing.assert_array_equal(row, np.asarray(img).reshape(-1))


def test_files_of_another_parquet_layout_are_ingested_again(monkeypatch) -> None:
    """The layout of the Parquet files is part of the ingest folder's name: files an older
    aepipe wrote (a column per feature) are never read as tensor columns."""
    from tasks.io import sources

    cfg = build_config({})
    now = sources.source_fingerprint(cfg)
    assert sources.source_fingerprint(cfg) == now
    monkeypatch.setattr(sources, "LAYOUT", sources.LAYOUT - 1)
    assert sources.source_fingerprint(cfg) != now


def test_an_npz_is_checked_against_its_headers_and_memory_before_loading(
    tmp_path, monkeypatch
) -> None:
    """An NPZ entry whose size is not what its header declares is refused unread; one whose
    arrays would not fit in half the memory available is refused before np.load allocates
    them (a 2 MB zip of zeros can declare gigabytes); a row wider than MAX_ROW_VALUES too."""
    import zipfile

    import ae_models.training.streaming

    path = tmp_path / "lies.npz"
    np.savez(path, X=np.zeros((4, 3)))
    with zipfile.ZipFile(path) as zf:
        body = zf.read("X.npy")
    lying = body.replace(b"(4, 3)", b"(9, 3)")  # the header claims more rows than follow
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", lying)
    for read in (read_npz, lambda p: npz_x_shape(p)):
        with pytest.raises(SourceReadError, match=r"declares shape \(9, 3\) \(216 bytes\)"):
            read(path)
    honest = tmp_path / "big.npz"
    np.savez_compressed(honest, X=np.zeros((1000, 1000)), y=np.zeros(1000))
    monkeypatch.setattr(ae_models.training.streaming, "available_memory", lambda: 4 << 20)
    with pytest.raises(SourceReadError, match=r"declares 0\.0 GiB of values; this machine has"):
        read_npz(honest)
    monkeypatch.undo()
    assert read_npz(honest).features.shape == (1000, 1000)
    wide = tmp_path / "wide.npz"
    np.savez_compressed(wide, X=np.zeros((1, 2**20 + 1), dtype=np.uint8))
    with pytest.raises(SourceReadError, match="values a row; aepipe takes at most"):
        npz_x_shape(wide)


def test_one_huge_image_is_quarantined_not_the_whole_folder(tmp_path, tmp_stores) -> None:
    """Issue 47.9: one 400-megapixel PNG among the images failed the whole run with PIL's
    DecompressionBombError. Its header alone (20000 x 20000, a few bytes) now sets that one
    image aside with the reason, first in the folder or not; the others ingest."""
    import zlib

    write_images(tmp_path / "imgs", 6)
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    (tmp_path / "imgs" / "a" / "00-huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + iend)
    ingested = ingest_source(cfg(tmp_path / "imgs", max_quarantine_fraction=0.5), tmp_stores)
    assert ingested.rows == 6 and ingested.quarantined == 1
    (row,) = pq.read_table(ingested.quarantine_path).to_pylist()
    assert row["location"] == "a/00-huge.png"
    assert row["reason"].startswith("image too large to decode: Image size (400000000 pixels)")
