from __future__ import annotations

from parity.errors import NotFound


class PromptNotFound(NotFound):
    code = "prompt_not_found"
