"""Pipeline configs: defaults, YAML + overrides, one-line errors."""

from __future__ import annotations

import pytest

from tasks.config import ConfigError, PipelineConfig, apply_overrides, build_config, load_config


def test_defaults_run_the_digits_demo() -> None:
    cfg = PipelineConfig()
    assert cfg.source.path == "digits" and cfg.source.resolved_format == "builtin"
    assert cfg.model.name == "deep" and cfg.model_name == "aepipe-digits"


def test_yaml_with_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: adult\nmodel:\n  code_size: 4\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, {"train.epochs": 7, "model.params.activation": "elu"})
    assert cfg.dataset == "adult" and cfg.model.code_size == 4
    assert cfg.train.epochs == 7 and cfg.model.params == {"activation": "elu"}


def test_flat_params_cover_every_section() -> None:
    params = build_config({"train": {"epochs": 3}}).flat_params()
    assert params["train.epochs"] == "3" and params["model.name"] == "deep"
    assert params["source.path"] == "digits"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"modle": {}}, "modle: Extra inputs are not permitted"),
        ({"train": {"epochs": 0}}, "epochs must be >= 1"),
        ({"dataset": "my table"}, "dataset name 'my table' must start with a letter"),
        # checked whole: a pattern ending in '$' let a trailing newline through
        ({"dataset": "nl\n"}, r"dataset name 'nl\\n' must start with a letter"),
        ({"dataset": "a" * 300}, "dataset name is 300 characters long; at most 64"),
        ({"registered_model": "../x/y"}, "registered_model '../x/y' must start with a letter"),
        ({"registered_model": "a..b"}, "registered_model 'a..b' must start"),
        ({"registered_model": "m" * 200}, "registered_model is 200 characters long"),
        ({"contamination": 0.9}, "contamination"),
    ],
)
def test_errors_are_one_line_and_name_the_key(data, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config(data)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_source_formats_from_names(tmp_path) -> None:
    def fmt(path) -> str:
        return build_config({"source": {"path": str(path)}}).source.resolved_format

    assert fmt("a.csv") == "csv" and fmt("a.parquet") == "parquet" and fmt("a.npz") == "npz"
    assert fmt("train-images-idx3-ubyte.gz") == "idx"
    (tmp_path / "pics" / "cats").mkdir(parents=True)
    (tmp_path / "pics" / "cats" / "1.png").write_bytes(b"")
    assert fmt(tmp_path / "pics") == "images"
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        fmt(tmp_path / "data.xlsx")
    with pytest.raises(ConfigError, match="does not exist"):
        fmt(tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"folder .*notes' holds no CSV files .* no images"):
        fmt(tmp_path / "notes")  # said "cannot tell the format" before


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"model": {"code_size": 3}}
    out = apply_overrides(data, {"model.code_size": 5})
    assert data == {"model": {"code_size": 3}} and out == {"model": {"code_size": 5}}


def test_dataset_is_named_after_the_source_by_default() -> None:
    assert build_config({}).dataset == "digits"
    assert build_config({"source": {"path": "data/sales 2024.csv"}}).dataset == "sales_2024"
    assert build_config({"source": {"path": "x/train-images-idx3-ubyte.gz"}}).dataset == (
        "train_images_idx3_ubyte"
    )
    assert build_config({"source": {"path": "pics/"}}).dataset == "pics"
    assert build_config({"source": {"path": "2024.parquet"}}).dataset == "d_2024"
    named = build_config({"dataset": "mine", "source": {"path": "a.csv"}})
    assert named.dataset == "mine" and named.model_name == "aepipe-mine"


def test_yaml_aliases_are_refused_so_a_small_file_cannot_expand(tmp_path, aepipe_main) -> None:
    """Issue 47.4: a 1 KB "billion laughs" alias tree under model.params passed safe_load and
    validation, then hung at 4.4 GB. Aliases are refused where they are met, in a config
    file and in a --set value alike."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("model:\n  params:\n" + "".join(f"    {line}\n" for line in lines))
    with pytest.raises(ConfigError, match=r"uses the YAML alias \*a0 \(line 4\)"):
        load_config(laughs)
    done = aepipe_main("run", "--set", "model.params={a: &a [1, 2], b: *a}", cwd=tmp_path)
    assert done.returncode == 2 and "--set model.params uses the YAML alias *a" in done.stderr
    assert not (tmp_path / ".aepipe").exists()
    plain = tmp_path / "plain.yaml"
    plain.write_text("model:\n  params:\n    hidden: [16, 8]\n")
    assert load_config(plain).model.params == {"hidden": [16, 8]}
