"""What the entry point builds once and hands down: settings, clock, ids, database."""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parity.api.connlimit import ConnectionLimits
from parity.auth.cache import TokenCache
from parity.auth.ratelimit import ClientRateLimiter
from parity.auth.service import AuthConfig, AuthDeps
from parity.chain.factory import open_chain_client
from parity.chain.ports import ChainClient
from parity.chain.startup import ChainStatus
from parity.clock import Clock, SystemClock
from parity.config import Settings
from parity.core.billing.pricing import ComputePrice
from parity.core.tasks.retry import RetryPolicy
from parity.db.session import Database
from parity.events.delivery import DeliveryDeps
from parity.events.hub import EventHub
from parity.events.service import EventDeps
from parity.fl.claim_answer import with_inline_model
from parity.fl.deps import FLDeps
from parity.ledger.deps import LedgerDeps, StakeReader
from parity.llm.deps import LlmDeps
from parity.llm.streams import StreamBus, open_stream_bus
from parity.relay import WakeRelay
from parity.runners.service import RunnerConfig
from parity.storage.factory import open_content_store
from parity.storage.ports import ContentStore
from parity.storage.service import StorageConfig
from parity.tasks.deps import ClaimAnswer, TaskDeps
from parity.tasks.wakeups import WakeHub

if TYPE_CHECKING:  # the worker module imports much of the server; only its type is needed
    from parity.ledger.settlement import SettlementWorker


@dataclass
class Container:
    """Built once per process. The dependency bundles below are built on first use and kept
    (their inputs are fixed after construction)."""

    settings: Settings
    db: Database
    clock: Clock = field(default_factory=SystemClock)
    random_bytes: Callable[[int], bytes] = secrets.token_bytes
    started_monotonic: float = field(default_factory=time.monotonic)
    draining: bool = False
    # The HTTP server's connection marks and counts (run_server sets them; none in process).
    connection_limits: ConnectionLimits | None = None
    settlement: SettlementWorker | None = None  # runs in this process (chain + signer)
    relay: WakeRelay | None = None  # cross-replica wake-ups (PostgreSQL LISTEN/NOTIFY)
    wakeups: WakeHub = field(default_factory=WakeHub)
    event_hub: EventHub = field(default_factory=EventHub)
    # The chain start-up check's verdict (None until the lifespan or run_server ran it) and
    # when it was taken (monotonic seconds), so /api/status can re-check an unreachable node.
    chain_status: ChainStatus | None = None
    chain_checked_monotonic: float = 0.0

    @functools.cached_property
    def tasks(self) -> TaskDeps:
        s = self.settings
        return TaskDeps(
            clock=self.clock,
            random_bytes=self.random_bytes,
            wakeups=self.wakeups,
            lease_seconds=s.lease_seconds,
            offer_seconds=s.task_offer_seconds,
            retry=RetryPolicy(
                base_delay_seconds=s.task_retry_base_seconds,
                max_delay_seconds=max(s.task_retry_max_seconds, s.task_retry_base_seconds),
            ),
            log_max_bytes=s.task_log_max_bytes,
            output_inline_max_bytes=s.task_output_inline_max_bytes,
            max_pending_per_client=s.task_max_pending_per_client,
            max_pending_total=s.task_max_pending_total,
            events=self.events,
            ledger=self.ledger,
        )

    @functools.cached_property
    def llm(self) -> LlmDeps:
        s = self.settings
        return LlmDeps(
            tasks=self.tasks,
            queue_timeout_seconds=s.llm_queue_timeout_seconds,
            default_max_tokens=s.llm_default_max_tokens,
            offer_seconds=s.llm_offer_seconds,
        )

    @functools.cached_property
    def fl(self) -> FLDeps:
        return FLDeps(
            tasks=self.tasks,
            store=self.content_store,
            round_timeout_seconds=self.settings.fl_round_timeout_seconds,
        )

    @functools.cached_property
    def claim_answers(self) -> dict[str, ClaimAnswer]:
        """By task type: what a runner's claim of such a task carries beyond its row (the
        runner router applies it to the task's config before answering)."""
        return {"fl_train": functools.partial(with_inline_model, self.fl)}

    @functools.cached_property
    def events(self) -> EventDeps:
        s = self.settings
        return EventDeps(
            clock=self.clock,
            random_bytes=self.random_bytes,
            hub=self.event_hub,
            admins=s.admins,
            allow_private_webhooks=s.allow_private_webhooks,
            visibility_lag_seconds=s.events_visibility_lag_seconds,
        )

    @functools.cached_property
    def deliveries(self) -> DeliveryDeps:
        """Webhook delivery; the jitter comes from the injected random source."""
        random_bytes = self.random_bytes
        return DeliveryDeps(
            clock=self.clock,
            random=lambda: int.from_bytes(random_bytes(4), "big") / 2**32,
            allow_private=self.settings.allow_private_webhooks,
            timeout_seconds=self.settings.webhook_timeout_seconds,
            disable_after_seconds=self.settings.webhook_disable_after_hours * 3600,
            disable_min_failures=self.settings.webhook_disable_min_failures,
            retry_for_seconds=self.settings.webhook_retry_hours * 3600,
        )

    @functools.cached_property
    def runners(self) -> RunnerConfig:
        s = self.settings
        return RunnerConfig(
            allow_private_webhooks=s.allow_private_webhooks,
            min_version=s.runner_min_version,
            offline_timeout_seconds=s.offline_timeout_seconds,
            clock=self.clock,
            random_bytes=self.random_bytes,
            events=self.tasks.events,
            ledger=self.tasks.ledger,
        )

    @functools.cached_property
    def auth(self) -> AuthDeps:
        s = self.settings
        return AuthDeps(
            config=AuthConfig(
                public_url=s.public_url,
                chain_id=s.filecoin_chain_id,
                nonce_ttl_seconds=s.auth_nonce_ttl_seconds,
                session_ttl_seconds=s.auth_session_ttl_seconds,
                max_open_nonces=s.auth_max_open_nonces,
                admins=s.admins,
            ),
            clock=self.clock,
            random_bytes=self.random_bytes,
        )

    @functools.cached_property
    def token_cache(self) -> TokenCache:
        """Authenticated principals by token hash (AUTH_CACHE_SECONDS); every revocation clears
        it, and the wake-up relay carries the clear to the other replicas."""
        return TokenCache(self.settings.auth_cache_seconds, self.clock)

    @functools.cached_property
    def nonce_limiter(self) -> ClientRateLimiter:
        """Sign-in nonce requests per client address (AUTH_NONCE_RATE_PER_MINUTE, bursts of
        AUTH_NONCE_BURST), counted in this process."""
        s = self.settings
        return ClientRateLimiter(s.auth_nonce_rate_per_minute, s.auth_nonce_burst, self.clock)

    @functools.cached_property
    def ledger(self) -> LedgerDeps:
        """Pricing, escrow and stake gating; the stake cache lives as long as the container."""
        s = self.settings
        return LedgerDeps(
            clock=self.clock,
            price=ComputePrice(
                base=s.price_task_base,
                cpu_core_second=s.price_cpu_core_second,
                memory_mb_second=s.price_memory_mb_second,
                gpu_second=s.price_gpu_second,
            ),
            default_timeout_seconds=s.billing_default_timeout_seconds,
            fee_bps=s.protocol_fee_bps,
            protocol_account=s.protocol_fee_address or None,
            min_stake=s.min_stake,
            min_stake_tokens=s.min_stake_tokens,
            stake_id_mode=s.stake_id_mode,
            stakes=StakeReader(lambda: self.chain, s.stake_cache_seconds, self.clock),
            token_symbol=s.filecoin_token_symbol,
        )

    @functools.cached_property
    def content_store(self) -> ContentStore:
        """Built on first use (kubo when FILECOIN_IPFS_ENDPOINT is set, else the local
        blockstore); tests may assign their own."""
        return open_content_store(self.settings)

    @functools.cached_property
    def chain(self) -> ChainClient | None:
        """The chain client (web3 over FILECOIN_RPC), or None when FILECOIN_RPC is unset; built
        on first use; tests may assign their own (e.g. the fake)."""
        return open_chain_client(self.settings)

    async def close_chain(self) -> None:
        client = self.__dict__.pop("chain", None)
        if client is not None:
            await client.aclose()

    @functools.cached_property
    def streams(self) -> StreamBus:
        """LLM token deltas from the runner's stream to the client's connection: in-process,
        or Redis pub/sub shared by the replicas when STREAM_BUS_URL is set. Built on first
        use; tests may assign their own."""
        return open_stream_bus(self.settings.stream_bus_url)

    async def close_streams(self) -> None:
        bus = self.__dict__.pop("streams", None)
        if bus is not None:
            await bus.aclose()

    async def close_content_store(self) -> None:
        store = self.__dict__.pop("content_store", None)
        if store is not None:
            await store.aclose()

    @functools.cached_property
    def storage(self) -> StorageConfig:
        s = self.settings
        return StorageConfig(
            max_upload_bytes=s.storage_max_upload_bytes,
            quota_bytes=s.storage_quota_bytes,
            max_pins=s.storage_max_pins,
            gateway_url=s.filecoin_gateway_url,
            download_base=f"{s.public_url}{s.server_endpoint}/v1/storage/download/",
            gc_grace_seconds=s.storage_gc_grace_seconds,
        )
