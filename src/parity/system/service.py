"""Health and status reporting."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity import __version__
from parity.auth import service as auth_service
from parity.chain.startup import OFF, ChainStatus, is_stale, recheck
from parity.container import Container
from parity.ledger import service as ledger_service
from parity.llm.streams import stream_bus_kind
from parity.runners import stats as runner_stats
from parity.system.unpaid import unpaid_warning
from parity.tasks import stats as task_stats

UNSHARED_STORE = (
    "another replica uses this database, and this one keeps files in its own local blockstore: "
    "content stored through one replica is not found through the others; set "
    "FILECOIN_IPFS_ENDPOINT on every replica to one kubo node"
)
UNSHARED_STREAMS = (
    "another replica uses this database, and this one relays LLM token streams in process only: "
    "a streaming client whose runner streams to another replica gets no tokens until the prompt "
    "completes, then the whole text; set STREAM_BUS_URL on every replica to one Redis or NATS"
)
MIXED_STREAMS = (
    "another replica relays LLM token streams over a different STREAM_BUS_URL (or in process "
    "only): a streaming client on one and a runner streaming to the other get no tokens until "
    "the prompt completes, then the whole text; set the same STREAM_BUS_URL on every replica"
)
STREAM_BUS_DOWN = (
    "STREAM_BUS_URL: {bus} does not answer: LLM token deltas reach only the clients on the "
    "replica that received them, the others get the whole text when the prompt completes "
    "(the relay resumes once {bus} answers)"
)


async def check_health(container: Container) -> dict[str, Any]:
    """Raises the database's own error when it is down (mapped to 503)."""
    await container.db.ping()
    return {"status": "healthy", "database": "ok"}


async def describe_status(container: Container, session: AsyncSession) -> dict[str, Any]:
    s = container.settings
    uptime = container.clock.monotonic() - container.started_monotonic
    chain = await _chain_status(container)
    peers = container.relay.peers if container.relay is not None else 0
    limits = container.connection_limits
    return {
        "service": "parity-server",
        "version": __version__,
        "uptime_seconds": round(max(uptime, 0.0), 3),
        "mode": "embedded" if s.embedded else "postgresql",
        # Counts only (the page is public), each an aggregate statement: no rows are loaded.
        "counts": {
            "accounts": await auth_service.count_accounts(session),
            "runners": await runner_stats.count_by_status(session, task_stats.claim_holders()),
            "tasks": await task_stats.count_by_status(session),
        },
        "queue": await task_stats.queue_depth(session, container.clock.now()),
        "backends": {
            "database": container.db.dialect,
            "content_store": container.content_store.kind,
            "chain": chain.state,
            "wakeups": "postgres-notify"
            if container.relay is not None and container.relay.connected
            else "in-process",
            # Other replicas heard on the relay: wake-ups are sent only while there are some.
            "wakeup_peers": peers,
            # LLM token deltas between replicas: Redis or NATS pub/sub (STREAM_BUS_URL) or none.
            "streams": stream_bus_kind(s.stream_bus_url),
        },
        # Settings that are wrong for how the server runs (empty when none).
        "warnings": await _warnings(container, session, peers, chain),
        "storage": await container.content_store.describe(),
        "chain": chain.describe(),
        "billing": await ledger_service.describe(
            session, container.ledger, settling=container.settlement is not None
        ),
        "draining": container.draining,
        "connections": limits.describe() if limits is not None else None,
    }


async def _warnings(
    container: Container, session: AsyncSession, peers: int, chain: ChainStatus
) -> list[str]:
    out = [UNSHARED_STORE] if peers and container.content_store.kind == "local" else []
    if chain.reset:
        out.append(f"FILECOIN_RPC: {chain.reset}")
    streams = await _stream_warning(container, peers)
    if streams is not None:
        out.append(streams)
    unpaid = await unpaid_warning(container, session)
    if unpaid is not None:
        out.append(unpaid)
    busy = container.connection_limits.warning() if container.connection_limits else None
    if busy is not None:
        out.append(busy)
    return out


def replica_setup(stream_bus_url: str) -> dict[str, str]:
    """What a replica announces of its settings on the wake-up relay, for the others to compare
    with theirs: the stream bus it relays tokens over, as a hash (the URL may hold a password)."""
    digest = hashlib.sha256(stream_bus_url.encode()).hexdigest()[:16] if stream_bus_url else ""
    return {"streams": digest}


async def _stream_warning(container: Container, peers: int) -> str | None:
    """Token streams that cannot cross replicas: no STREAM_BUS_URL while another replica is
    heard, another replica heard on a different one, or a bus that does not answer (pinged
    now, so a wrong URL shows before the first stream)."""
    if not container.settings.stream_bus_url:
        return UNSHARED_STREAMS if peers else None
    relay = container.relay
    if relay is not None and peers:
        mine = relay.setup.get("streams")
        if any(s.get("streams", mine) != mine for s in relay.peer_setups()):
            return MIXED_STREAMS
    if await container.streams.ping():
        return None
    bus = "NATS" if stream_bus_kind(container.settings.stream_bus_url) == "nats" else "Redis"
    return STREAM_BUS_DOWN.format(bus=bus)


async def _chain_status(container: Container) -> ChainStatus:
    """The last verdict; any but "off" is re-checked once it is RECHECK_SECONDS old, so a node
    that goes away after start-up, or comes back, shows up without a restart. One request
    re-checks at a time: the others answer the last verdict meanwhile."""
    status = container.chain_status
    if status is None:
        return OFF if container.chain is None else ChainStatus("unreachable", "not checked yet")
    now = container.clock.monotonic()
    if not is_stale(status, now - container.chain_checked_monotonic):
        return status
    container.chain_checked_monotonic = now  # taken by this request (a slow node: one waits)
    container.chain_status = await recheck(container.chain, container.settings, status)
    return container.chain_status
