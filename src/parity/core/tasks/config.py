"""Validation and normalisation of compute-task configs (ARCHITECTURE §4, "Config per type").

``command``: ``{command: [argv] | "string", env?, working_dir?, timeout_seconds?, network?}``.
A string command is split like a POSIX shell (``shlex.split``) and later run *without* a shell,
so quoting groups words but ``;``, ``|`` and ``$VAR`` have no special meaning.

``docker``: ``{image | image_cid, command?, env?, network: false, timeout_seconds?,
working_dir?}``, also the legacy ``{image_name, docker_image_url}`` of the old Go server and the
legacy top-level request field ``image``.

Every refusal is a :class:`ConfigInvalid` naming the offending field by a dotted path
(``config.command``, ``config.env.FOO``); list items are named ``config.command[2]``.
Pure: stdlib only, no I/O.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "MAX_ENV_ENTRIES",
    "MAX_TIMEOUT_SECONDS",
    "ConfigInvalid",
    "normalize_command_config",
    "normalize_docker_config",
    "normalize_task_config",
]

MAX_ENV_ENTRIES = 256
MAX_TIMEOUT_SECONDS = 86_400  # one day

_COMMAND_KEYS = frozenset({"command", "env", "working_dir", "timeout_seconds", "network"})
_DOCKER_KEYS = frozenset(
    {
        "image",
        "image_cid",
        "image_name",
        "docker_image_url",
        "command",
        "env",
        "network",
        "timeout_seconds",
        "working_dir",
    }
)

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Docker reference grammar (distribution/reference), restricted to lowercase registry and
# repository names (Docker refuses uppercase repositories). Tags may hold uppercase, as in
# Docker's own grammar.
_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
_IMAGE_REF = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?"
)
_MAX_IMAGE_NAME = 255  # Docker's limit on the name part

# CIDv0: "Qm" + 44 base58btc characters. CIDv1: multibase "b" prefix + lowercase base32.
_CID_V0 = re.compile(r"Qm[1-9A-HJ-NP-Za-km-z]{44}")
_CID_V1 = re.compile(r"b[a-z2-7]{49,}")


class ConfigInvalid(ValueError):
    """A task config is refused; ``field`` is a dotted path, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def normalize_task_config(
    task_type: str, config: Mapping[str, Any] | None, *, image: str | None = None
) -> dict[str, Any]:
    """Validate ``config`` for a compute task of ``task_type`` and return its canonical form.

    ``task_type`` is ``"command"`` or ``"docker"``; any other value is refused with
    ``field == "type"``. ``config`` None is treated as ``{}``. ``image`` is the legacy top-level
    request field: used by docker tasks only, ignored for command tasks.
    """
    cfg: Mapping[str, Any] = {} if config is None else config
    schema = CONFIG_SCHEMAS.get(task_type)
    if schema is None:
        known = " or ".join(CONFIG_SCHEMAS)
        raise ConfigInvalid("type", f"unknown compute task type {task_type!r}; use {known}")
    return schema(cfg, image)


def normalize_command_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a ``command`` task config.

    Returns ``{"command": [argv...], "env": {...}, "network": bool}`` plus ``command_string``
    (the original string, when one was given), ``working_dir`` and ``timeout_seconds`` when
    given. ``command`` is always a non-empty ``list[str]``; ``network`` defaults to False.
    """
    _check_mapping(config)
    _check_known_keys(config, _COMMAND_KEYS)
    out: dict[str, Any] = {}
    if "command" not in config or config["command"] is None:
        raise ConfigInvalid("config.command", "is required")
    argv, original = _parse_command(config["command"])
    if not argv:
        raise ConfigInvalid("config.command", "must not be empty")
    out["command"] = argv
    if original is not None:
        out["command_string"] = original
    _common_options(config, out, require_absolute_dir=False)
    return out


def normalize_docker_config(
    config: Mapping[str, Any], *, image: str | None = None
) -> dict[str, Any]:
    """Validate a ``docker`` task config.

    Returns ``image`` or ``image_cid``, ``command`` (argv list, or None for the image's
    default), ``env``, ``network`` (default False), plus ``timeout_seconds``,
    ``working_dir``, ``command_string`` when given and ``image_url`` for the legacy
    ``docker_image_url``. Legacy ``image_name`` maps to ``image``; the top-level ``image``
    keyword fills ``image`` when the config names no image at all. Giving both an image and an
    ``image_cid``, or two different image names, is refused as ambiguous.
    """
    _check_mapping(config)
    _check_known_keys(config, _DOCKER_KEYS)
    out: dict[str, Any] = {}
    _docker_image(config, image, out)

    command = config.get("command")
    if command is None or command == "" or command == []:
        out["command"] = None  # the image's own entrypoint/cmd
    else:
        argv, original = _parse_command(command)
        if not argv:
            raise ConfigInvalid("config.command", "must not be blank; omit it instead")
        out["command"] = argv
        if original is not None:
            out["command_string"] = original
    _common_options(config, out, require_absolute_dir=True)
    return out


def _docker_image(config: Mapping[str, Any], top_level: str | None, out: dict[str, Any]) -> None:
    image = _optional_str(config, "image")
    image_name = _optional_str(config, "image_name")
    image_cid = _optional_str(config, "image_cid")
    image_url = _optional_str(config, "docker_image_url")

    if image is not None and image_name is not None and image != image_name:
        raise ConfigInvalid("config.image_name", "differs from config.image; give one")
    field = "config.image" if image is not None else "config.image_name"
    ref = image if image is not None else image_name
    if top_level is not None and top_level != "":
        if ref is None and image_cid is None:
            ref, field = top_level, "image"
        elif ref is not None and top_level != ref:
            raise ConfigInvalid("image", f"differs from {field}; give one")
        elif ref is None:
            raise ConfigInvalid("image", "conflicts with config.image_cid; give one")

    if ref is not None and image_cid is not None:
        raise ConfigInvalid("config.image_cid", f"conflicts with {field}; give one")
    if ref is None and image_cid is None:
        raise ConfigInvalid("config.image", "is required (or config.image_cid)")

    if ref is not None:
        _check_image_ref(field, ref)
        out["image"] = ref
    else:
        assert image_cid is not None
        if not (_CID_V0.fullmatch(image_cid) or _CID_V1.fullmatch(image_cid)):
            raise ConfigInvalid("config.image_cid", "is not a CID (Qm... or b...)")
        out["image_cid"] = image_cid
    if image_url is not None:
        if any(ch.isspace() for ch in image_url):
            raise ConfigInvalid("config.docker_image_url", "must not contain whitespace")
        out["image_url"] = image_url


def _check_image_ref(field: str, ref: str) -> None:
    name = ref.split("@", 1)[0]
    if len(name) > _MAX_IMAGE_NAME:
        raise ConfigInvalid(field, f"is longer than {_MAX_IMAGE_NAME} characters")
    if not _IMAGE_REF.fullmatch(ref):
        raise ConfigInvalid(
            field, "is not a docker image reference (lowercase [registry/]name[:tag][@sha256:…])"
        )


def _optional_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigInvalid(f"config.{key}", "must be a string")
    if value == "":
        raise ConfigInvalid(f"config.{key}", "must not be empty")
    if "\x00" in value:
        raise ConfigInvalid(f"config.{key}", "must not contain NUL bytes")
    return value


def _check_mapping(config: object) -> None:
    if not isinstance(config, Mapping):
        raise ConfigInvalid("config", "must be an object")


def _check_known_keys(config: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in config:
        if key not in allowed:
            raise ConfigInvalid(f"config.{key}", "unknown key")


def _parse_command(value: object) -> tuple[list[str], str | None]:
    """Return (argv, original string or None)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigInvalid("config.command", "must not contain NUL bytes")
        try:
            argv = shlex.split(value, posix=True)
        except ValueError as exc:  # unbalanced quotes, trailing escape
            raise ConfigInvalid("config.command", f"cannot be split: {exc}") from None
        return argv, value
    if isinstance(value, list | tuple):
        argv = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigInvalid(f"config.command[{i}]", "must be a string")
            if "\x00" in item:
                raise ConfigInvalid(f"config.command[{i}]", "must not contain NUL bytes")
            argv.append(item)
        if argv and argv[0] == "":
            raise ConfigInvalid("config.command[0]", "program must not be empty")
        return argv, None
    raise ConfigInvalid("config.command", "must be a list of strings or a string")


def _common_options(
    config: Mapping[str, Any], out: dict[str, Any], *, require_absolute_dir: bool
) -> None:
    out["env"] = _parse_env(config.get("env"))
    network = config.get("network", False)
    if network is None:
        network = False
    if not isinstance(network, bool):
        raise ConfigInvalid("config.network", "must be true or false")
    out["network"] = network
    if config.get("timeout_seconds") is not None:
        out["timeout_seconds"] = _parse_timeout(config["timeout_seconds"])
    if config.get("working_dir") is not None:
        out["working_dir"] = _parse_working_dir(config["working_dir"], require_absolute_dir)


def _parse_env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigInvalid("config.env", "must be an object of string values")
    if len(value) > MAX_ENV_ENTRIES:
        raise ConfigInvalid("config.env", f"has more than {MAX_ENV_ENTRIES} entries")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise ConfigInvalid(f"config.env.{key}", "name must match [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(item, str):
            raise ConfigInvalid(f"config.env.{key}", "value must be a string")
        if "\x00" in item:
            raise ConfigInvalid(f"config.env.{key}", "value must not contain NUL bytes")
        env[key] = item
    return env


def _parse_timeout(value: object) -> int:
    # bool is an int subclass: true must not mean one second.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigInvalid("config.timeout_seconds", "must be an integer number of seconds")
    if not 1 <= value <= MAX_TIMEOUT_SECONDS:
        raise ConfigInvalid(
            "config.timeout_seconds", f"must be between 1 and {MAX_TIMEOUT_SECONDS}"
        )
    return value


def _parse_working_dir(value: object, require_absolute: bool) -> str:
    field = "config.working_dir"
    if not isinstance(value, str):
        raise ConfigInvalid(field, "must be a string")
    if value == "":
        raise ConfigInvalid(field, "must not be empty")
    if "\x00" in value:
        raise ConfigInvalid(field, "must not contain NUL bytes")
    if require_absolute and not value.startswith("/"):
        raise ConfigInvalid(field, "must be an absolute path inside the container")
    if ".." in value.replace("\\", "/").split("/"):
        raise ConfigInvalid(field, "must not contain '..'")
    return value


ConfigSchema = Callable[[Mapping[str, Any], str | None], dict[str, Any]]

CONFIG_SCHEMAS: dict[str, ConfigSchema] = {
    "command": lambda cfg, _image: normalize_command_config(cfg),
    "docker": lambda cfg, image: normalize_docker_config(cfg, image=image),
}
"""Task type → its config normaliser (a new client-submitted type adds one entry here)."""
