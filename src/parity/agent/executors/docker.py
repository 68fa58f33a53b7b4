"""The `docker` executor through a DockerEngine port: the real adapter speaks the Engine API
over its unix socket; a fake stands in for tests. Without an engine the runner does not
advertise docker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from parity.agent.executors import CancelToken, LogSink, Outcome


class DockerError(Exception):
    pass


@dataclass
class ContainerSpec:
    image: str
    command: list[str] | None
    env: dict[str, str]
    network: bool
    memory_mb: int
    cpu_cores: float


class DockerEngine(Protocol):
    """The few Engine operations a runner needs."""

    async def ping(self) -> bool: ...
    async def ensure_image(self, image: str) -> None: ...
    async def load_image(self, tar: AsyncIterator[bytes]) -> str:
        """Load an image tar (docker save); returns the loaded image reference."""
        ...

    async def run(self, spec: ContainerSpec) -> str: ...
    async def wait(self, container_id: str) -> int: ...
    async def logs(self, container_id: str) -> str: ...
    async def kill(self, container_id: str) -> None: ...
    async def remove(self, container_id: str) -> None: ...


class HttpDockerEngine:
    """Docker Engine API v1.41 over /var/run/docker.sock (every call has a timeout)."""

    def __init__(self, socket_path: str = "/var/run/docker.sock", timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _client(self, timeout: float | None = None) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        return httpx.AsyncClient(
            transport=transport, base_url="http://docker/v1.41", timeout=timeout or self.timeout
        )

    async def ping(self) -> bool:
        try:
            async with self._client(3.0) as c:
                return (await c.get("/_ping")).status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    async def ensure_image(self, image: str) -> None:
        async with self._client(600.0) as c:
            if (await c.get(f"/images/{image}/json")).status_code == 200:
                return
            name, _, tag = image.partition(":")
            r = await c.post("/images/create", params={"fromImage": name, "tag": tag or "latest"})
            if r.status_code != 200:
                raise DockerError(f"cannot pull {image}: HTTP {r.status_code}")

    async def load_image(self, tar: AsyncIterator[bytes]) -> str:
        async with self._client(600.0) as c:
            r = await c.post(
                "/images/load", content=tar, headers={"content-type": "application/x-tar"}
            )
            if r.status_code != 200:
                raise DockerError(f"image load failed: HTTP {r.status_code}")
            # The engine answers JSON lines such as {"stream": "Loaded image: name:tag\n"}.
            for line in r.text.splitlines():
                try:
                    stream = str(json.loads(line).get("stream", ""))
                except (ValueError, AttributeError):
                    continue
                for prefix in ("Loaded image: ", "Loaded image ID: "):
                    if stream.startswith(prefix):
                        return stream[len(prefix) :].strip()
            raise DockerError("image load answered no image name")

    async def run(self, spec: ContainerSpec) -> str:
        body: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "NetworkDisabled": not spec.network,
            "HostConfig": {
                "Memory": spec.memory_mb * 1024 * 1024,
                "NanoCpus": int(spec.cpu_cores * 1e9) if spec.cpu_cores else 0,
                "NetworkMode": "bridge" if spec.network else "none",
                "ReadonlyRootfs": False,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
            },
        }
        if spec.command:
            body["Cmd"] = spec.command
        async with self._client() as c:
            r = await c.post("/containers/create", json=body)
            if r.status_code != 201:
                raise DockerError(f"create failed: HTTP {r.status_code} {r.text[:200]}")
            cid = str(r.json()["Id"])
            r = await c.post(f"/containers/{cid}/start")
            if r.status_code not in (204, 304):
                raise DockerError(f"start failed: HTTP {r.status_code}")
            return cid

    async def wait(self, container_id: str) -> int:
        async with self._client(None) as c:
            c.timeout = httpx.Timeout(None)
            r = await c.post(f"/containers/{container_id}/wait")
            return int(r.json().get("StatusCode", -1))

    async def logs(self, container_id: str) -> str:
        async with self._client() as c:
            r = await c.get(f"/containers/{container_id}/logs", params={"stdout": 1, "stderr": 1})
            return _demux(r.content)

    async def kill(self, container_id: str) -> None:
        async with self._client() as c:
            await c.post(f"/containers/{container_id}/kill")

    async def remove(self, container_id: str) -> None:
        async with self._client() as c:
            await c.delete(f"/containers/{container_id}", params={"force": 1})


def _demux(raw: bytes) -> str:
    """Docker multiplexes stdout/stderr with 8-byte frame headers when no TTY is attached."""
    out = bytearray()
    i = 0
    while i + 8 <= len(raw):
        size = int.from_bytes(raw[i + 4 : i + 8], "big")
        out += raw[i + 8 : i + 8 + size]
        i += 8 + size
    return out.decode(errors="replace") if out or not raw else raw.decode(errors="replace")


@dataclass
class FakeDockerEngine:
    """In-memory engine for tests: 'runs' by echoing the command; exit code configurable."""

    images: set[str] = field(default_factory=set)
    exit_code: int = 0
    output: str = "fake container output\n"
    runs: list[ContainerSpec] = field(default_factory=list)
    delay: float = 0.0
    killed: list[str] = field(default_factory=list)
    loaded: list[bytes] = field(default_factory=list)

    async def ping(self) -> bool:
        return True

    async def ensure_image(self, image: str) -> None:
        self.images.add(image)

    async def load_image(self, tar: AsyncIterator[bytes]) -> str:
        data = b"".join([chunk async for chunk in tar])
        name = f"loaded-{hashlib.sha256(data).hexdigest()[:12]}:latest"
        self.images.add(name)
        self.loaded.append(data)
        return name

    async def run(self, spec: ContainerSpec) -> str:
        self.runs.append(spec)
        return f"fake-{len(self.runs)}"

    async def wait(self, container_id: str) -> int:
        await asyncio.sleep(self.delay)
        return self.exit_code

    async def logs(self, container_id: str) -> str:
        return self.output

    async def kill(self, container_id: str) -> None:
        self.killed.append(container_id)

    async def remove(self, container_id: str) -> None:
        return None


ImageFetcher = Callable[[str], AsyncIterator[bytes]]


class DockerExecutor:
    """``fetch`` streams an image tar by CID from the content store (for ``image_cid``)."""

    def __init__(
        self,
        engine: DockerEngine,
        output_bytes: int = 64 * 1024,
        fetch: ImageFetcher | None = None,
    ) -> None:
        self.engine = engine
        self.output_bytes = output_bytes
        self.fetch = fetch

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        config = task.get("config") or {}
        image = config.get("image")
        if not image and config.get("image_cid"):
            if self.fetch is None:
                return Outcome(False, None, "", "no content store to fetch image_cid from")
            try:
                image = await self.engine.load_image(self.fetch(str(config["image_cid"])))
            except (DockerError, httpx.HTTPError) as exc:
                return Outcome(False, None, "", f"docker: cannot load image_cid: {exc}")
        if not image:
            return Outcome(False, None, "", "config has neither image nor image_cid")
        res = task.get("resources") or {}
        spec = ContainerSpec(
            image=str(image),
            command=[str(a) for a in config["command"]] if config.get("command") else None,
            env={str(k): str(v) for k, v in (config.get("env") or {}).items()},
            network=bool(config.get("network")),
            memory_mb=int(res.get("memory_mb") or 2048),
            cpu_cores=float(res.get("cpu_cores") or 0),
        )
        timeout = float(config.get("timeout_seconds") or task.get("timeout_seconds") or 3600)
        try:
            if not config.get("image_cid"):
                await self.engine.ensure_image(spec.image)
            cid = await self.engine.run(spec)
        except (DockerError, httpx.HTTPError) as exc:
            return Outcome(False, None, "", f"docker: {exc}")
        try:
            wait = asyncio.create_task(self.engine.wait(cid))
            stop = asyncio.create_task(cancel.wait())
            done, _ = await asyncio.wait(
                {wait, stop}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
            if wait not in done:
                await self.engine.kill(cid)
                stop.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await wait
                why = (
                    "cancelled: " + cancel.reason
                    if cancel.cancelled
                    else f"timed out after {timeout:g} s"
                )
                return Outcome(False, None, "", why, cancelled=cancel.cancelled)
            stop.cancel()
            code = wait.result()
            output = (await self.engine.logs(cid))[: self.output_bytes]
            if output:
                await logs(output.splitlines())
            if code != 0:
                return Outcome(False, code, output, f"container exit code {code}")
            return Outcome(True, 0, output)
        finally:
            with contextlib.suppress(Exception):
                await self.engine.remove(cid)
