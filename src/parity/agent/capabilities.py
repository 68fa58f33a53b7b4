"""What this machine can do: CPU cores, memory, GPUs (nvidia-smi), a Docker engine, models."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import httpx
import psutil

from parity.agent.executors.docker import DockerEngine


async def count_gpus() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        proc = await asyncio.create_subprocess_exec(
            "nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    except (OSError, TimeoutError):
        return 0
    return len([line for line in out.decode().splitlines() if line.strip()])


async def ollama_models(base_url: str | None) -> list[dict[str, Any]]:
    """Models of an Ollama backend (/api/tags); none when unset or unreachable."""
    if not base_url:
        return []
    try:
        async with httpx.AsyncClient(timeout=5.0) as c:
            r = await c.get(base_url.rstrip("/") + "/api/tags")
            r.raise_for_status()
            return [
                {"model_name": m["name"], "is_loaded": True, "max_tokens": 4096}
                for m in r.json().get("models", [])
            ]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


async def detect(docker: DockerEngine | None, ollama_url: str | None = None) -> dict[str, Any]:
    has_docker = bool(docker is not None and await docker.ping())
    return {
        "capabilities": {
            "cpu_cores": os.cpu_count() or 1,
            "memory_mb": int(psutil.virtual_memory().total / (1024 * 1024)),
            "gpus": await count_gpus(),
            "docker": has_docker,
            # Set by the runner loop: true when it runs fl_train tasks (the default).
            "fl": False,
        },
        "models": await ollama_models(ollama_url),
    }
