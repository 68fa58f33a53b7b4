"""HTTP byte ranges (RFC 9110 §14): one range per request; several ranges are served whole."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ByteRange", "RangeNotSatisfiable", "parse_range"]

MAX_RANGE_HEADER = 200


class RangeNotSatisfiable(ValueError):
    """The range starts at or after the end of the content (answer 416)."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The byte range a ``Range`` header asks for, or None to send the whole content.

    ``bytes=a-b`` (inclusive), ``bytes=a-``, ``bytes=-n`` (the last n bytes). A header that is
    malformed, uses another unit, or lists several ranges is ignored (the whole content is sent,
    which RFC 9110 allows); a syntactically valid range that lies wholly past the end raises
    :class:`RangeNotSatisfiable`.
    """
    if not header or len(header) > MAX_RANGE_HEADER:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable("an empty suffix range selects nothing")
        return ByteRange(max(size - suffix, 0), size) if size else _unsatisfiable()
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, content has {size} bytes")
    return ByteRange(start, end)


def _unsatisfiable() -> ByteRange:
    raise RangeNotSatisfiable("the content is empty")
