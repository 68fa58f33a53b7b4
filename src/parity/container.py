"""What the entry point builds once and hands down: settings, clock, ids, database."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from parity.auth.service import AuthConfig, AuthDeps
from parity.clock import Clock, SystemClock
from parity.config import Settings
from parity.core.tasks.retry import RetryPolicy
from parity.db.session import Database
from parity.runners.service import RunnerConfig
from parity.tasks.deps import TaskDeps
from parity.tasks.wakeups import WakeHub


@dataclass
class Container:
    settings: Settings
    db: Database
    clock: Clock = field(default_factory=SystemClock)
    random_bytes: Callable[[int], bytes] = secrets.token_bytes
    started_monotonic: float = field(default_factory=time.monotonic)
    draining: bool = False
    wakeups: WakeHub = field(default_factory=WakeHub)

    @property
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
        )

    @property
    def runners(self) -> RunnerConfig:
        s = self.settings
        return RunnerConfig(
            allow_private_webhooks=s.allow_private_webhooks,
            min_version=s.runner_min_version,
            offline_timeout_seconds=s.offline_timeout_seconds,
        )

    @property
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
