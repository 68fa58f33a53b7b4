"""Stream the file out of a ``multipart/form-data`` body without spooling it anywhere.

Starlette's ``request.form()`` writes every file to a temporary file first; here the bytes of
one part go straight on to the content store. The part used is the field named ``file`` (the
original README's form), or else the first part that carries a filename. Other parts are
skipped without being kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from parity.storage.errors import MultipartInvalid

FIELD = "file"
MAX_HEADER_BYTES = 8192


class _Parts:
    """Parser callbacks: collects the chosen part's data between two ``write`` calls."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.filename: str | None = None
        self.found = False
        self.done = False
        self.ended = False
        self._taking = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}

    def part_begin(self) -> None:
        self._headers = {}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        name = bytes(self._field).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        field = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._taking = not self.found and (field == FIELD or filename is not None)
        if self._taking:
            self.found = True
            self.filename = filename.decode("utf-8", "replace") if filename else None

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._taking:
            self.out.append(data[start:end])

    def part_end(self) -> None:
        if self._taking:
            self._taking = False
            self.done = True

    def end(self) -> None:
        self.ended = True


class MultipartFile:
    """``async for piece in MultipartFile(body, content_type)`` yields the file's bytes;
    ``filename`` is set once its headers have been read. ``check_filename``, when given, is
    called with the filename (if the part has one) before the part's first byte is yielded:
    what it raises ends the upload before anything is stored."""

    def __init__(
        self,
        body: AsyncIterable[bytes],
        content_type: str | None,
        check_filename: Callable[[str], None] | None = None,
    ) -> None:
        kind, params = parse_options_header(content_type or "")
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise MultipartInvalid("expected multipart/form-data with a boundary")
        self._body = body
        self._parts = _Parts()
        self._check = check_filename
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._parts.part_begin,
                    "on_header_field": self._parts.header_field,
                    "on_header_value": self._parts.header_value,
                    "on_header_end": self._parts.header_end,
                    "on_headers_finished": self._parts.headers_finished,
                    "on_part_data": self._parts.part_data,
                    "on_part_end": self._parts.part_end,
                    "on_end": self._parts.end,
                },
                max_header_size=MAX_HEADER_BYTES,
            )
        except MultipartParseError as exc:
            raise MultipartInvalid(str(exc)) from None

    @property
    def filename(self) -> str | None:
        return self._parts.filename

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parts = self._parts
        async for piece in self._body:
            try:
                self._parser.write(piece)
            except MultipartParseError as exc:
                raise MultipartInvalid(f"malformed multipart body: {exc}") from None
            if parts.found and self._check is not None:
                check, self._check = self._check, None
                if parts.filename is not None:
                    check(parts.filename)
            if parts.out:
                batch, parts.out = parts.out, []
                for data in batch:
                    yield data
            if parts.done:
                return  # the rest of the body (other fields) is not needed
        self._parser.finalize()
        if not parts.found:
            raise MultipartInvalid(f"no file part (a field named {FIELD!r} is expected)")
        if not parts.done:
            raise MultipartInvalid("the multipart body ended inside the file part")
