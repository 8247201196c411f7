"""A deployed run names only the deployment's own places or those the operator allowed."""

from __future__ import annotations

import pytest

from tasks.config import ConfigError, PipelineConfig, build_config
from tasks.places import Allowed, check_deployed_run, check_places


def config(**overrides) -> PipelineConfig:
    return build_config({"dataset": "orders", **overrides})


def test_the_deployments_own_places_pass_without_an_allow_list(tmp_path) -> None:
    own = config(home=str(tmp_path / "home"), source={"path": str(tmp_path / "o.csv")})
    check_places(own, own, Allowed())  # what `prefect deploy` stored
    check_places(PipelineConfig(), PipelineConfig(), Allowed())  # the built-in digits


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"source": {"path": "/etc/passwd", "delimiter": ":"}}, "source.path '/etc/passwd'"),
        ({"home": "/tmp/elsewhere"}, "home '/tmp/elsewhere'"),
        ({"task_runner": "dask", "dask_address": "tcp://10.9.9.9:8786"}, "AEPIPE_ALLOWED_DASK"),
        ({"train_deployment": "other/flow"}, "AEPIPE_ALLOWED_DEPLOYMENTS"),
        ({"source": {"path": "s3://their-bucket/x.csv"}}, "s3://their-bucket/x.csv"),
        ({"source": {"path": "s3://ours-too/x.csv"}}, "s3://ours-too/x.csv"),  # not s3://ours
        ({"source": {"path": "s3://ours/in/../../x.csv"}}, "s3://ours/in/../../x.csv"),
    ],
)
def test_a_parameter_naming_another_place_is_refused(tmp_path, overrides, refused) -> None:
    allowed = Allowed(paths=(str(tmp_path), "s3://ours"))
    with pytest.raises(ConfigError, match="not this deployment's own") as err:
        check_places(config(**overrides), PipelineConfig(), allowed)
    assert refused in str(err.value)


def test_allowed_places_pass_and_links_out_of_them_do_not(tmp_path) -> None:
    inside = tmp_path / "data" / "o.csv"
    inside.parent.mkdir()
    inside.write_text("a\n1\n")
    allowed = Allowed(
        paths=(str(tmp_path / "data"), "s3://ours/"),
        dask=("tcp://10.0.0.5:8786",),
    )
    for ok in (
        config(source={"path": str(inside)}, home=str(tmp_path / "data" / "home")),
        config(source={"path": "s3://ours/in/x.csv"}),
        config(task_runner="dask", dask_address="tcp://10.0.0.5:8786"),
        config(train_deployment="train-autoencoder/train-autoencoder"),  # the default list
    ):
        check_places(ok, PipelineConfig(), allowed)
    link = tmp_path / "data" / "passwd.csv"
    link.symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match=r"passwd\.csv"):  # resolved before it is compared
        check_places(config(source={"path": str(link)}), PipelineConfig(), allowed)
    with pytest.raises(ConfigError, match="outside its data store"):
        check_places(PipelineConfig(), PipelineConfig(), allowed, handed=["/etc/shadow"])


def test_the_allow_list_comes_from_the_environment() -> None:
    env = {
        "AEPIPE_ALLOWED_PATHS": "/srv/in, s3://ours/",
        "AEPIPE_ALLOWED_DASK": "tcp://a:1",
    }
    allowed = Allowed.from_env(env)
    assert allowed.paths == ("/srv/in", "s3://ours/") and allowed.dask == ("tcp://a:1",)
    assert allowed.deployments == ("train-autoencoder/train-autoencoder",)
    with pytest.raises(ConfigError, match="absolute folders or URIs"):
        Allowed.from_env({"AEPIPE_ALLOWED_PATHS": "relative/dir"})


def test_a_run_not_started_from_a_deployment_is_the_operators_own(tmp_path) -> None:
    check_deployed_run(config(source={"path": "/etc/passwd"}), str(tmp_path))
