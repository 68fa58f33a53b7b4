"""Service info, health and status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from parity import __version__
from parity.api.deps import ContainerDep, ReadSession
from parity.api.jsonbody import JsonRoute
from parity.system import service
from parity.system.schemas import StatusRead

router = APIRouter(route_class=JsonRoute, tags=["system"])
root_router = APIRouter(route_class=JsonRoute, tags=["system"])


@router.get("/health")
async def health(c: ContainerDep) -> dict[str, Any]:
    """200 when the database answers; 503 ``database_unavailable`` when it does not."""
    return await service.check_health(c)


@router.get("/status", response_model=StatusRead)
async def status(c: ContainerDep, session: ReadSession) -> dict[str, Any]:
    """Version, uptime, the network at a glance (runners and tasks by status, queue depth) and
    which backends are active. Public: counts only, nothing about any one account."""
    return await service.describe_status(c, session)


@root_router.get("/")
async def index(c: ContainerDep) -> dict[str, Any]:
    """Service description (no database access)."""
    e = c.settings.server_endpoint
    return {
        "service": "parity-server",
        "version": __version__,
        "status": "running",
        "description": "Coordination server for a decentralized AI and compute network",
        "endpoints": {
            "api": f"{e}/v1",
            "health": f"{e}/health",
            "status": f"{e}/status",
            "docs": "/docs",
        },
    }


@root_router.get("/health")
async def legacy_health(c: ContainerDep) -> dict[str, Any]:
    """The original server's health path; now it really checks the database."""
    return await service.check_health(c)
