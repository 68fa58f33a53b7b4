"""Outbound URL guard: address classification, URL syntax, resolution and pinned delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from parity.webhooks.ssrf import (
    IPAddress,
    ResolvedTarget,
    UrlRefused,
    check_url_syntax,
    classify,
    post_json,
    resolve_and_check,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


class FakeResolver:
    """A resolver that answers ``answers`` for every host and records the lookups."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.answers


# --- classify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "link-local"),
        ("168.63.129.16", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("::ffff:127.0.0.1", "IPv4-embedded loopback"),
        ("::ffff:10.0.0.1", "IPv4-embedded private"),
        ("::ffff:169.254.169.254", "IPv4-embedded metadata"),
        ("64:ff9b::7f00:1", "IPv4-embedded loopback"),
        ("2002:a00:1::", "IPv4-embedded private"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("100.127.255.254", "shared address space (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "private"),
        ("198.18.0.1", "private"),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("100.63.255.255", None),
        ("100.128.0.0", None),
        ("172.32.0.1", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_classify_names_non_public_addresses(address: str, reason: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == reason


# --- syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/hook", ("https", "example.com", 443)),
        ("http://example.com", ("http", "example.com", 80)),
        ("HTTPS://Example.COM:8443/x?y=1", ("https", "example.com", 8443)),
        ("http://[2001:db8::1]:8080/", ("http", "2001:db8::1", 8080)),
        ("http://10.0.0.1/", ("http", "10.0.0.1", 80)),
    ],
)
def test_check_url_syntax_returns_scheme_host_and_port(
    url: str, expected: tuple[str, str, int]
) -> None:
    assert check_url_syntax(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://example.com",
        "example.com/hook",
        "http://",
        "http:///path",
        "https://:443/",
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://example.com\\@evil.test/",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://example.com:abc/",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "",
    ],
)
def test_check_url_syntax_refuses(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url_syntax(url)


# --- resolution ------------------------------------------------------------------------------


async def test_resolve_and_check_returns_first_public_address() -> None:
    resolver = FakeResolver(PUBLIC_V4, PUBLIC_V6)
    target = await resolve_and_check(
        "https://hooks.example.com:8443/x", allow_private=False, resolver=resolver
    )
    assert target == ResolvedTarget(
        url="https://hooks.example.com:8443/x",
        scheme="https",
        host="hooks.example.com",
        port=8443,
        ip=ipaddress.ip_address(PUBLIC_V4),
    )
    assert resolver.calls == [("hooks.example.com", 8443)]


@pytest.mark.parametrize("answers", [(PUBLIC_V4, "10.0.0.5"), ("10.0.0.5", PUBLIC_V4)])
async def test_resolve_refuses_when_any_answer_is_private(answers: tuple[str, str]) -> None:
    with pytest.raises(UrlRefused, match=r"10\.0\.0\.5"):
        await resolve_and_check(
            "https://split.example.com/", allow_private=False, resolver=FakeResolver(*answers)
        )


async def test_resolve_refuses_metadata_answer() -> None:
    with pytest.raises(UrlRefused, match="metadata"):
        await resolve_and_check(
            "http://imds.example.com/",
            allow_private=False,
            resolver=FakeResolver("169.254.169.254"),
        )


@pytest.mark.parametrize(
    "answer", ["169.254.169.254", "169.254.170.2", "fe80::1", "fd00:ec2::254",
               "::ffff:169.254.169.254", "100.100.100.200"],
)  # fmt: skip
async def test_metadata_and_link_local_are_refused_even_when_private_targets_are_allowed(
    answer: str,
) -> None:
    with pytest.raises(UrlRefused, match=r"metadata|link-local"):
        await resolve_and_check(
            "http://imds.example.com/", allow_private=True, resolver=FakeResolver(answer)
        )


async def test_allow_private_passes_loopback() -> None:
    target = await resolve_and_check(
        "http://localhost:9000/hook", allow_private=True, resolver=FakeResolver("127.0.0.1")
    )
    assert target.ip == ipaddress.ip_address("127.0.0.1")
    assert (target.host, target.port) == ("localhost", 9000)


async def test_ip_literal_host_is_checked_without_lookup() -> None:
    resolver = FakeResolver(PUBLIC_V4)
    with pytest.raises(UrlRefused, match="loopback"):
        await resolve_and_check("http://127.0.0.1/", allow_private=False, resolver=resolver)
    with pytest.raises(UrlRefused, match="loopback"):
        await resolve_and_check("http://[::1]/", allow_private=False, resolver=resolver)
    assert resolver.calls == []


async def test_resolution_failure_is_refused() -> None:
    async def failing(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UrlRefused, match="cannot resolve"):
        await resolve_and_check("http://nx.example.com/", allow_private=False, resolver=failing)


async def test_empty_resolution_is_refused() -> None:
    with pytest.raises(UrlRefused, match="no address"):
        await resolve_and_check(
            "http://empty.example.com/", allow_private=False, resolver=FakeResolver()
        )


async def test_syntax_is_checked_before_resolution_even_when_private_allowed() -> None:
    with pytest.raises(UrlRefused):
        await resolve_and_check("ftp://localhost/", allow_private=True, resolver=FakeResolver())


async def test_default_resolver_resolves_an_ip_literal_free_name_locally() -> None:
    # "localhost" resolves from /etc/hosts: no network traffic.
    target = await resolve_and_check("http://localhost:1/", allow_private=True)
    assert target.ip.is_loopback


async def test_default_resolver_result_is_refused_for_localhost() -> None:
    with pytest.raises(UrlRefused, match="loopback"):
        await resolve_and_check("http://localhost:1/", allow_private=False)


# --- post_json -------------------------------------------------------------------------------


class Recorder:
    """A MockTransport handler that records requests and answers with a streamed response."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        stream: httpx.AsyncByteStream | None = None,
    ) -> None:
        self.status = status
        self.headers = headers or {}
        self.stream = stream
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # A stream (not content) keeps the body unread, as a real transport's would be.
        stream = self.stream if self.stream is not None else httpx.ByteStream(b"ok")
        return httpx.Response(self.status, headers=self.headers, stream=stream)


async def _post(
    url: str, recorder: Recorder, *answers: str, allow_private: bool = False, **kw: object
) -> int:
    return await post_json(
        url,
        b'{"a": 1}',
        {"webhook-id": "msg_1", "Host": "spoofed.test"},
        allow_private=allow_private,
        resolver=FakeResolver(*answers),
        transport=httpx.MockTransport(recorder),
        **kw,  # type: ignore[arg-type]
    )


async def test_post_json_connects_to_resolved_ip_with_original_host_header() -> None:
    recorder = Recorder(204)
    status = await _post("https://hooks.example.com/in?x=1", recorder, PUBLIC_V4)
    assert status == 204
    [request] = recorder.requests
    assert request.method == "POST"
    assert request.url.host == PUBLIC_V4
    assert request.url.scheme == "https"
    assert request.url.port is None
    assert request.url.raw_path == b"/in?x=1"
    assert request.headers["host"] == "hooks.example.com"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["content-type"] == "application/json"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert json.loads(request.content) == {"a": 1}


async def test_post_json_keeps_non_default_port_in_url_and_host_header() -> None:
    recorder = Recorder(200)
    await _post("http://hooks.example.com:8080/in", recorder, PUBLIC_V4)
    [request] = recorder.requests
    assert (request.url.host, request.url.port) == (PUBLIC_V4, 8080)
    assert request.headers["host"] == "hooks.example.com:8080"
    assert "sni_hostname" not in request.extensions


async def test_post_json_brackets_an_ipv6_address() -> None:
    recorder = Recorder(200)
    await _post("https://v6.example.com/", recorder, PUBLIC_V6)
    [request] = recorder.requests
    assert request.url.host == PUBLIC_V6
    assert str(request.url).startswith(f"https://[{PUBLIC_V6}]/")
    assert request.headers["host"] == "v6.example.com"


async def test_post_json_returns_redirect_status_without_following() -> None:
    recorder = Recorder(302, headers={"Location": "http://169.254.169.254/"})
    status = await _post("https://hooks.example.com/", recorder, PUBLIC_V4)
    assert status == 302
    assert len(recorder.requests) == 1


async def test_post_json_refuses_private_target_without_sending() -> None:
    recorder = Recorder(200)
    with pytest.raises(UrlRefused):
        await _post("https://hooks.example.com/", recorder, PUBLIC_V4, "192.168.0.10")
    assert recorder.requests == []


async def test_post_json_allows_private_target_when_allowed() -> None:
    recorder = Recorder(200)
    status = await _post("http://runner.local:7000/push", recorder, "10.0.0.7", allow_private=True)
    assert status == 200
    assert recorder.requests[0].url.host == "10.0.0.7"
    assert recorder.requests[0].headers["host"] == "runner.local:7000"


class EndlessStream(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += 1024
            yield b"x" * 1024

    async def aclose(self) -> None:
        self.closed = True


async def test_post_json_stops_reading_a_body_over_the_cap() -> None:
    stream = EndlessStream()
    recorder = Recorder(200, stream=stream)
    status = await _post("https://hooks.example.com/", recorder, PUBLIC_V4, max_response_bytes=4096)
    assert status == 200
    assert stream.sent == 4096
    assert stream.closed


async def test_post_json_times_out_a_slow_resolution() -> None:
    async def slow(host: str, port: int) -> Sequence[IPAddress]:
        await asyncio.sleep(10)
        return [ipaddress.ip_address(PUBLIC_V4)]

    with pytest.raises(TimeoutError):
        await post_json(
            "https://hooks.example.com/",
            b"{}",
            {},
            allow_private=False,
            timeout=0.05,
            resolver=slow,
            transport=httpx.MockTransport(Recorder(200)),
        )


async def test_post_json_does_not_override_given_content_type() -> None:
    recorder = Recorder(200)
    await post_json(
        "https://hooks.example.com/",
        b"{}",
        {"content-type": "application/webhook+json"},
        allow_private=False,
        resolver=FakeResolver(PUBLIC_V4),
        transport=httpx.MockTransport(recorder),
    )
    assert recorder.requests[0].headers["content-type"] == "application/webhook+json"


def test_outbound_posts_share_one_verifying_tls_context():
    import ssl

    from parity.webhooks.ssrf import _tls_context

    ctx = _tls_context()
    assert ctx is _tls_context()  # built once: loading the CA bundle per POST cost ~10 ms
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # trust roots loaded
