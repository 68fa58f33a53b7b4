"""The settlement worker: pays ledger credits on chain, each exactly once (ARCHITECTURE §6).

A settlement moves through ``pending → signed → broadcast → mined → confirmed`` (or
``reverted``). Every step is its own short transaction, and no RPC call runs inside a
transaction except local signing; a crash between any two steps leaves a state the next pass
continues from:

1. **intent** (``pending``): unsettled credits grouped by (payer stake → payee), at most
   SETTLEMENT_BATCH_ENTRIES each, become one Settlement with a unique ``ref``; the entries point
   at it (a conditional UPDATE). A payment to oneself, or of nothing, is settled at once.
2. **sign** (``signed``): gas and fees are estimated first (a revert there, e.g. a short stake,
   leaves the intent ``pending`` with ``last_error`` and a growing back-off, and alerts); then
   one transaction locks the signer's nonce row, takes ``max(db, chain pending count)``, signs
   locally and stores the raw transaction before anything is sent.
3. **broadcast**: the stored raw transaction is sent (re-sending it is harmless). A node that
   says its nonce is used while no transaction of ours has a receipt means one this server did
   not sign took it: ``failed``, with an alert, until an operator releases it (``released``).
4. **receipt** (``mined``): all of the settlement's transactions are checked. Without a receipt:
   dropped → the stored raw is sent again; pending longer than SETTLEMENT_FEE_BUMP_SECONDS →
   a fee bump, the SAME nonce with fees raised by SETTLEMENT_FEE_BUMP_PERCENT, stored first.
   A worker's first pass re-broadcasts everything still unmined (a restart).
5. **confirm**: at FILECOIN_CONFIRMATIONS depth with the receipt still in the same block, an ok
   receipt confirms (entries ``settled_at``), a reverted one returns the entries to unsettled
   and alerts. A receipt that vanished or moved (reorg) sends the settlement back to
   ``broadcast`` and its raw transaction out again.

Exactly once: an entry is attached to one live settlement at a time; a settlement owns one
nonce, so of all its transactions at most one can ever be mined; nothing is broadcast that was
not stored first; entries are released only when the mined transaction reverted at depth (it
moved nothing), or when an operator releases a ``failed`` settlement, whose nonce another
transaction took (:mod:`parity.ledger.settlement_service`). ``transferPaymentRef`` adds the
contract's own refusal of a reused ref.

One signer, one worker: on PostgreSQL a pass holds a session advisory lock and skips when
another replica has it; on SQLite the server's lock file already makes the process single.

The steps live in :mod:`parity.ledger.settlement_signing` (1 to 3) and
:mod:`parity.ledger.settlement_tracking` (4 and 5), over the helpers they share in
:mod:`parity.ledger.settlement_base`; this module runs them: a pass, the loop, the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import text

from parity.chain.errors import ChainRetryableError
from parity.chain.ports import ChainClient
from parity.clock import Clock
from parity.config import Settings
from parity.db.session import Database
from parity.events.service import EventDeps
from parity.jobs.runner import job_key
from parity.ledger.settlement_base import log
from parity.ledger.settlement_policy import (
    HOOK_POINTS,
    PassReport,
    SettlementConfig,
    bumped_fees,
    payment_ref,
)
from parity.ledger.settlement_signing import SigningSteps
from parity.ledger.settlement_tracking import TrackingSteps
from parity.ledger.signer import load_settlement_signer

LOCK_KEY = job_key("settlement")
__all__ = [
    "HOOK_POINTS",
    "PassReport",
    "SettlementConfig",
    "SettlementWorker",
    "bumped_fees",
    "payment_ref",
    "settlement_worker",
]


class SettlementWorker(SigningSteps, TrackingSteps):
    """Runs the passes; :meth:`run_once` is one pass (tests call it), :meth:`start` loops."""

    def _setup(self) -> None:
        # Called by WorkerBase.__init__: the loop's own state.
        self._first_pass = True
        self._pass_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- passes --------------------------------------------------------------------------------

    async def run_once(self) -> PassReport:
        """One pass over every step. The first pass of a worker re-broadcasts every unmined
        transaction (after a restart the node may have lost them)."""
        report = PassReport()
        async with self._pass_lock, self._single() as got:
            if not got:
                report.skipped = True
                return report
            try:
                await self._make_intents(report)
                if self._first_pass:
                    await self._check_owner()
                await self._sign_pending(report)
                await self._broadcast_signed(report)
                await self._check_receipts(report, rebroadcast=self._first_pass)
                await self._confirm_mined(report)
            except ChainRetryableError as exc:
                report.unavailable = True
                log.warning("settlement_chain_unavailable", detail=str(exc))
                return report
            self._first_pass = False
        return report

    @contextlib.asynccontextmanager
    async def _single(self) -> AsyncIterator[bool]:
        if self.db.is_sqlite:
            yield True
            return
        async with self.db.write_engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            got = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}))
            try:
                yield got
            finally:
                if got:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})

    async def _check_owner(self) -> None:
        """Say at once when the signer cannot settle (only the StakeWallet's owner may move
        stake); payments would otherwise only show it as refused estimations."""
        owner = await self.chain.stake_wallet_owner()
        if owner != self.signer.address.lower():
            data = {"signer": self.signer.address.lower(), "owner": owner}
            log.error("settlement_alert", kind="settlement_signer_not_owner", **data)
            if self.alert is not None:
                with contextlib.suppress(Exception):
                    self.alert("settlement_signer_not_owner", data)

    # -- loop ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="settlement")

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                counts = (await self.run_once()).counts()
                if counts:
                    log.info("settlement_pass", **counts)
            except Exception as exc:
                log.warning("settlement_pass_failed", error=type(exc).__name__, detail=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.interval_seconds)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop at a pass boundary; a pass still running after ``timeout`` is cancelled (every
        step is its own transaction, so the next start continues from where it stopped)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        _, pending = await asyncio.wait([task], timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def settlement_worker(
    settings: Settings,
    db: Database,
    chain: ChainClient | None,
    clock: Clock,
    events: EventDeps | None = None,
) -> SettlementWorker | None:
    """The worker when the chain and a signer are configured, else None (logged)."""
    if chain is None:
        return None
    signer = load_settlement_signer(settings)
    if signer is None:
        log.info("settlement_off", reason="no SETTLEMENT_PRIVATE_KEY or SETTLEMENT_KEYSTORE_PATH")
        return None
    log.info("settlement_on", signer=signer.address.lower())
    return SettlementWorker(
        db, chain, signer, clock, SettlementConfig.from_settings(settings), events=events
    )
