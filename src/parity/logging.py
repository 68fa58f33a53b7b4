"""Structured JSON logs with request ids; secrets never reach a log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Which log keys hold secrets, by their words ("runner_token" -> runner, token):
# - a word that is always secret, wherever it stands ("webhook_secret", "password_hash");
SECRET_WORDS = frozenset(
    {"authorization", "password", "passwd", "passphrase", "secret", "cookie", "credentials"}
)
# - a last word that names a secret value: "claim_token", "signature". A key that only starts
#   with one names something about it that is public: "token_address", "token_symbol";
SECRET_LAST_WORDS = frozenset({"token", "signature", "sig", "privkey", "apikey"})
# - a secret two-word ending: "private_key", "x-api-key".
SECRET_ENDINGS = frozenset({("private", "key"), ("api", "key"), ("secret", "key")})
_WORD = re.compile(r"[_\-.\s]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # "sessionToken" -> "session_Token"
TOKEN_TEXT = re.compile(r"ps_(sess|run|key)_[0-9a-f]{8,}")


def is_secret_key(key: str) -> bool:
    words = [w for w in _WORD.split(_CAMEL.sub("_", key).lower()) if w]
    if not words:
        return False
    return (
        any(w in SECRET_WORDS for w in words)
        or words[-1] in SECRET_LAST_WORDS
        or tuple(words[-2:]) in SECRET_ENDINGS
    )


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and is_secret_key(key):
            event[key] = "[redacted]"
        elif isinstance(event[key], str):
            event[key] = TOKEN_TEXT.sub("ps_\\1_[redacted]", event[key])
    return event


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is at call time (it may be swapped, e.g. by tests)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _logger_factory(*_: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
