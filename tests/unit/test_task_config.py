"""Compute-task configs: what is accepted, how it is normalised, and which field a refusal names."""

from __future__ import annotations

from typing import Any

import pytest

from parity.core.tasks.config import (
    ConfigInvalid,
    normalize_command_config,
    normalize_docker_config,
    normalize_task_config,
)

DIGEST = "sha256:" + "a" * 64
CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
CID_V1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


# --- command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"command": ["echo", "hi"]},
            {"command": ["echo", "hi"], "env": {}, "network": False},
        ),
        (
            {"command": "echo 'a b'"},
            {
                "command": ["echo", "a b"],
                "command_string": "echo 'a b'",
                "env": {},
                "network": False,
            },
        ),
        (
            {"command": 'sh -c "echo $HOME; ls"'},
            {
                "command": ["sh", "-c", "echo $HOME; ls"],
                "command_string": 'sh -c "echo $HOME; ls"',
                "env": {},
                "network": False,
            },
        ),
        (
            {
                "command": ["python", "-m", "x"],
                "env": {"FOO": "1", "_bar2": ""},
                "working_dir": "/srv/job",
                "timeout_seconds": 60,
                "network": True,
            },
            {
                "command": ["python", "-m", "x"],
                "env": {"FOO": "1", "_bar2": ""},
                "working_dir": "/srv/job",
                "timeout_seconds": 60,
                "network": True,
            },
        ),
        (
            {"command": ["ls"], "working_dir": "data/in", "timeout_seconds": 86400},
            {
                "command": ["ls"],
                "env": {},
                "network": False,
                "working_dir": "data/in",
                "timeout_seconds": 86400,
            },
        ),
        (
            {"command": ["true"], "env": None, "timeout_seconds": None, "network": None},
            {"command": ["true"], "env": {}, "network": False},
        ),
    ],
)
def test_command_config_is_normalised(config: dict[str, Any], expected: dict[str, Any]) -> None:
    assert normalize_command_config(config) == expected


def test_string_command_is_split_without_shell_semantics() -> None:
    out = normalize_command_config({"command": "echo a|b > c"})
    assert out["command"] == ["echo", "a|b", ">", "c"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "config.command"),
        ({"command": None}, "config.command"),
        ({"command": []}, "config.command"),
        ({"command": ""}, "config.command"),
        ({"command": "   "}, "config.command"),
        ({"command": "echo 'unterminated"}, "config.command"),
        ({"command": 42}, "config.command"),
        ({"command": {"argv": ["ls"]}}, "config.command"),
        ({"command": ["echo", 3]}, "config.command[1]"),
        ({"command": ["echo", None]}, "config.command[1]"),
        ({"command": ["", "x"]}, "config.command[0]"),
        ({"command": ["echo", "a\x00b"]}, "config.command[1]"),
        ({"command": "echo a\x00b"}, "config.command"),
        ({"command": ["ls"], "env": ["FOO=1"]}, "config.env"),
        ({"command": ["ls"], "env": {"1FOO": "x"}}, "config.env.1FOO"),
        ({"command": ["ls"], "env": {"FOO-BAR": "x"}}, "config.env.FOO-BAR"),
        ({"command": ["ls"], "env": {"": "x"}}, "config.env."),
        ({"command": ["ls"], "env": {"FOO": 1}}, "config.env.FOO"),
        ({"command": ["ls"], "env": {"FOO": None}}, "config.env.FOO"),
        ({"command": ["ls"], "env": {"FOO": "a\x00"}}, "config.env.FOO"),
        ({"command": ["ls"], "env": {f"K{i}": "v" for i in range(257)}}, "config.env"),
        ({"command": ["ls"], "working_dir": "../etc"}, "config.working_dir"),
        ({"command": ["ls"], "working_dir": "/srv/../etc"}, "config.working_dir"),
        ({"command": ["ls"], "working_dir": "a/.."}, "config.working_dir"),
        ({"command": ["ls"], "working_dir": ""}, "config.working_dir"),
        ({"command": ["ls"], "working_dir": 5}, "config.working_dir"),
        ({"command": ["ls"], "timeout_seconds": 0}, "config.timeout_seconds"),
        ({"command": ["ls"], "timeout_seconds": 86401}, "config.timeout_seconds"),
        ({"command": ["ls"], "timeout_seconds": 1.5}, "config.timeout_seconds"),
        ({"command": ["ls"], "timeout_seconds": "60"}, "config.timeout_seconds"),
        ({"command": ["ls"], "timeout_seconds": True}, "config.timeout_seconds"),
        ({"command": ["ls"], "network": "yes"}, "config.network"),
        ({"command": ["ls"], "shell": True}, "config.shell"),
        ({"command": ["ls"], "image": "alpine"}, "config.image"),
    ],
)
def test_command_config_refusal_names_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_command_config(config)
    assert info.value.field == field
    assert str(info.value) == f"{field}: {info.value.reason}"


def test_env_with_exactly_256_entries_is_accepted() -> None:
    env = {f"K{i}": "v" for i in range(256)}
    assert normalize_command_config({"command": ["ls"], "env": env})["env"] == env


def test_config_invalid_is_a_value_error_with_field_and_reason() -> None:
    err = ConfigInvalid("config.command", "is required")
    assert isinstance(err, ValueError)
    assert (err.field, err.reason, str(err)) == (
        "config.command",
        "is required",
        "config.command: is required",
    )


def test_unknown_key_refusal_names_the_key() -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_command_config({"command": ["ls"], "cwd": "/tmp"})
    assert info.value.field == "config.cwd"
    assert "unknown" in info.value.reason


def test_config_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_command_config(["ls"])  # type: ignore[arg-type]
    assert info.value.field == "config"


def test_input_config_is_not_mutated_and_argv_is_a_copy() -> None:
    argv = ["echo", "hi"]
    config = {"command": argv}
    out = normalize_command_config(config)
    out["command"].append("x")
    assert config == {"command": ["echo", "hi"]}


# --- docker ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"image": "alpine"},
            {"image": "alpine", "command": None, "env": {}, "network": False},
        ),
        (
            {"image": "python:3.11-slim", "command": "python -c 'print(1)'"},
            {
                "image": "python:3.11-slim",
                "command": ["python", "-c", "print(1)"],
                "command_string": "python -c 'print(1)'",
                "env": {},
                "network": False,
            },
        ),
        (
            {
                "image": "ghcr.io/org/team/tool:v1.2@" + DIGEST,
                "command": ["run"],
                "env": {"A": "b"},
                "network": True,
                "timeout_seconds": 30,
                "working_dir": "/work",
            },
            {
                "image": "ghcr.io/org/team/tool:v1.2@" + DIGEST,
                "command": ["run"],
                "env": {"A": "b"},
                "network": True,
                "timeout_seconds": 30,
                "working_dir": "/work",
            },
        ),
        (
            {"image": "localhost:5000/my_app__x-y:Latest"},
            {
                "image": "localhost:5000/my_app__x-y:Latest",
                "command": None,
                "env": {},
                "network": False,
            },
        ),
        (
            {"image": "alpine@" + DIGEST, "command": []},
            {"image": "alpine@" + DIGEST, "command": None, "env": {}, "network": False},
        ),
        (
            {"image_cid": CID_V0},
            {"image_cid": CID_V0, "command": None, "env": {}, "network": False},
        ),
        (
            {"image_cid": CID_V1, "command": ""},
            {"image_cid": CID_V1, "command": None, "env": {}, "network": False},
        ),
    ],
)
def test_docker_config_is_normalised(config: dict[str, Any], expected: dict[str, Any]) -> None:
    assert normalize_docker_config(config) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"image_name": "myorg/trainer:1.0", "docker_image_url": "https://x.test/t.tar"},
            {
                "image": "myorg/trainer:1.0",
                "image_url": "https://x.test/t.tar",
                "command": None,
                "env": {},
                "network": False,
            },
        ),
        (
            {"image_name": "ubuntu"},
            {"image": "ubuntu", "command": None, "env": {}, "network": False},
        ),
        (
            {"image": "ubuntu", "image_name": "ubuntu"},
            {"image": "ubuntu", "command": None, "env": {}, "network": False},
        ),
    ],
)
def test_legacy_docker_shapes_are_accepted(
    config: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert normalize_docker_config(config) == expected


def test_top_level_image_fills_config_without_image() -> None:
    out = normalize_docker_config({"command": ["ls"]}, image="busybox:1.36")
    assert out["image"] == "busybox:1.36"
    assert out["command"] == ["ls"]


def test_top_level_image_equal_to_config_image_is_accepted() -> None:
    assert normalize_docker_config({"image": "alpine"}, image="alpine")["image"] == "alpine"


def test_empty_top_level_image_is_ignored() -> None:
    assert normalize_docker_config({"image": "alpine"}, image="")["image"] == "alpine"


@pytest.mark.parametrize(
    ("config", "image", "field"),
    [
        ({}, None, "config.image"),
        ({"docker_image_url": "https://x.test/t.tar"}, None, "config.image"),
        ({"image": ""}, None, "config.image"),
        ({"image": 3}, None, "config.image"),
        ({"image": "Alpine"}, None, "config.image"),
        ({"image": "GHCR.IO/org/x"}, None, "config.image"),
        ({"image": "alpine:"}, None, "config.image"),
        ({"image": "alpine latest"}, None, "config.image"),
        ({"image": "alpine;rm -rf /"}, None, "config.image"),
        ({"image": "-alpine"}, None, "config.image"),
        ({"image": "alpine@sha256:abc"}, None, "config.image"),
        ({"image": "alpine@sha256:" + "A" * 64}, None, "config.image"),
        ({"image": "a" * 256}, None, "config.image"),
        ({"image_name": "Bad Name"}, None, "config.image_name"),
        ({}, "not an image!", "image"),
        ({"image": "alpine"}, "ubuntu", "image"),
        ({"image_cid": CID_V0}, "ubuntu", "image"),
        ({"image": "alpine", "image_name": "ubuntu"}, None, "config.image_name"),
        ({"image": "alpine", "image_cid": CID_V0}, None, "config.image_cid"),
        ({"image_cid": "Qm123"}, None, "config.image_cid"),
        ({"image_cid": "Qm" + "0" * 44}, None, "config.image_cid"),  # 0 is not base58
        ({"image_cid": "b" + "a" * 20}, None, "config.image_cid"),
        ({"image_cid": "B" + "A" * 58}, None, "config.image_cid"),
        ({"image_cid": "zdj7W" + "a" * 44}, None, "config.image_cid"),
        ({"image": "alpine", "command": ["ls", 1]}, None, "config.command[1]"),
        ({"image": "alpine", "command": "  "}, None, "config.command"),
        ({"image": "alpine", "env": {"BAD-KEY": "x"}}, None, "config.env.BAD-KEY"),
        ({"image": "alpine", "network": 1}, None, "config.network"),
        ({"image": "alpine", "timeout_seconds": -5}, None, "config.timeout_seconds"),
        ({"image": "alpine", "working_dir": "rel/dir"}, None, "config.working_dir"),
        ({"image": "alpine", "working_dir": "/a/../b"}, None, "config.working_dir"),
        ({"image": "alpine", "docker_image_url": 5}, None, "config.docker_image_url"),
        ({"image": "alpine", "privileged": True}, None, "config.privileged"),
    ],
)
def test_docker_config_refusal_names_the_field(
    config: dict[str, Any], image: str | None, field: str
) -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_docker_config(config, image=image)
    assert info.value.field == field


# --- dispatch --------------------------------------------------------------------------------


def test_task_config_dispatches_on_type() -> None:
    assert normalize_task_config("command", {"command": "ls -l"})["command"] == ["ls", "-l"]
    assert normalize_task_config("docker", {"image": "alpine"})["image"] == "alpine"


def test_task_config_passes_top_level_image_to_docker() -> None:
    assert normalize_task_config("docker", None, image="alpine")["image"] == "alpine"


def test_task_config_ignores_top_level_image_for_command() -> None:
    out = normalize_task_config("command", {"command": ["ls"]}, image="alpine")
    assert "image" not in out


def test_none_config_for_command_names_config_command() -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_task_config("command", None)
    assert info.value.field == "config.command"


def test_none_config_for_docker_names_config_image() -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_task_config("docker", None)
    assert info.value.field == "config.image"


@pytest.mark.parametrize("task_type", ["llm", "fl_train", "shell", ""])
def test_unknown_task_type_is_refused_on_type(task_type: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        normalize_task_config(task_type, {"command": ["ls"]})
    assert info.value.field == "type"
