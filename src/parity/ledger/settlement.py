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
3. **broadcast**: the stored raw transaction is sent (re-sending it is harmless).
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
moved nothing). ``transferPaymentRef`` adds the contract's own refusal of a reused ref.

One signer, one worker: on PostgreSQL a pass holds a session advisory lock and skips when
another replica has it; on SQLite the server's lock file already makes the process single.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parity.chain.errors import ChainError, ChainRetryableError, NonceTooLow
from parity.chain.ports import (
    Call,
    ChainClient,
    Fees,
    Receipt,
    SignedTx,
    Signer,
    transfer_payment_call,
    transfer_payment_ref_call,
)
from parity.clock import Clock
from parity.config import Settings
from parity.db.session import Database
from parity.events import service as events_service
from parity.events.service import EventDeps
from parity.jobs.runner import job_key
from parity.ledger import settlement_repository as repo
from parity.ledger.models import Entry, Settlement, SettlementTx, SignerNonce
from parity.ledger.settlement_policy import (
    HOOK_POINTS,
    Alert,
    Hook,
    PassReport,
    SettlementConfig,
    bumped_fees,
    payment_ref,
)
from parity.ledger.settlement_repository import (
    BROADCAST,
    CONFIRMED,
    FAILED,
    MINED,
    PENDING,
    REVERTED,
    SIGNED,
)
from parity.ledger.signer import load_settlement_signer
from parity.logging import get_logger

log = get_logger("parity.settlement")

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


class _Raced(Exception):
    """Another writer attached an entry first: roll the intent back."""


def _groups(entries: Iterable[Entry], size: int) -> Iterable[tuple[str, str, list[Entry]]]:
    by_pair: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if e.counterparty is None or e.amount < 0:
            continue
        by_pair.setdefault((e.counterparty, e.account), []).append(e)
    for (payer, payee), group in by_pair.items():
        for i in range(0, len(group), size):
            yield payer, payee, group[i : i + size]


class SettlementWorker:
    """Runs the passes; :meth:`run_once` is one pass (tests call it), :meth:`start` loops."""

    def __init__(
        self,
        db: Database,
        chain: ChainClient,
        signer: Signer,
        clock: Clock,
        config: SettlementConfig | None = None,
        *,
        hook: Hook | None = None,
        alert: Alert | None = None,
        events: EventDeps | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.signer = signer
        self.address = signer.address.lower()
        self.clock = clock
        self.config = config or SettlementConfig()
        self.hook = hook  # called at HOOK_POINTS; raising there simulates a crash
        self.alert = alert
        self.events = events  # payment.settled / payment.reverted for the payer and payee
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

    def _at(self, point: str, settlement_id: uuid.UUID) -> None:
        if self.hook is not None:
            self.hook(point, settlement_id)

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

    def _raise_alert(self, kind: str, st: Settlement, **fields: Any) -> None:
        data = {
            "settlement_id": str(st.id),
            "payer": st.payer,
            "payee": st.payee,
            "amount": str(st.amount),
            **fields,
        }
        log.error("settlement_alert", kind=kind, **data)
        if self.alert is not None:
            try:
                self.alert(kind, data)
            except Exception as exc:  # an alert channel must not stop settlement
                log.warning("settlement_alert_failed", error=type(exc).__name__)

    async def _load(self, statuses: Sequence[str]) -> Sequence[Settlement]:
        async with self.db.read_session() as s:
            return await repo.by_status(s, statuses)

    async def _transactions(self, settlement_id: uuid.UUID) -> Sequence[SettlementTx]:
        async with self.db.read_session() as s:
            return await repo.transactions(s, settlement_id)

    # -- 1. intent -----------------------------------------------------------------------------

    async def _make_intents(self, report: PassReport) -> None:
        async with self.db.read_session() as s:
            entries = await repo.unsettled_credits(s, self.config.max_entries_per_pass)
        for payer, payee, chunk in _groups(entries, self.config.batch_entries):
            settlement_id = await self._make_intent(payer, payee, chunk)
            if settlement_id is not None:
                report.intents += 1
                self._at("after_intent", settlement_id)

    async def _make_intent(self, payer: str, payee: str, chunk: list[Entry]) -> uuid.UUID | None:
        now = self.clock.now()
        sid = uuid.uuid4()
        total = sum(e.amount for e in chunk)
        free = payer == payee or total == 0  # nothing moves on chain
        st = Settlement(
            id=sid,
            payer=payer,
            payee=payee,
            amount=total,
            ref=payment_ref(sid),
            status=CONFIRMED if free else PENDING,
            tries=0,
            created_at=now,
            updated_at=now,
            confirmed_at=now if free else None,
        )
        try:
            async with self.db.transaction() as s:
                await repo.add_settlement(s, st)
                if await repo.attach_entries(s, sid, [e.id for e in chunk]) != len(chunk):
                    raise _Raced
                if free:
                    await repo.settle_entries(s, sid, now)
        except _Raced:
            log.info("settlement_intent_raced", payer=payer, payee=payee)
            return None
        return sid

    # -- 2. sign -------------------------------------------------------------------------------

    async def _call(self, st: Settlement) -> Call:
        if await self.chain.supports_payment_ref():
            return transfer_payment_ref_call(
                st.payer, st.payee, st.amount, bytes.fromhex(st.ref[2:])
            )
        return transfer_payment_call(st.payer, st.payee, st.amount)

    def _due(self, st: Settlement, now: datetime) -> bool:
        if st.tries == 0:
            return True
        return st.updated_at + timedelta(seconds=self.config.retry_delay(st.tries)) <= now

    async def _sign_pending(self, report: PassReport) -> None:
        now = self.clock.now()
        for st in await self._load([PENDING]):
            if self._due(st, now):
                await self._sign(st, report)

    async def _sign(self, st: Settlement, report: PassReport) -> None:
        call = await self._call(st)
        async with self.db.read_session() as s:
            in_flight = await repo.in_flight_amount(s, st.payer)
        # Our own unmined payments from this stake come first: one that fits only if they fail
        # would revert on chain, so it waits instead.
        stake = await self.chain.stake_of(st.payer)
        if stake < in_flight + st.amount:
            await self._defer(
                st, f"payer stake short: {stake} staked, {in_flight} in flight, {st.amount} due"
            )
            report.deferred += 1
            return
        chain_next = await self.chain.transaction_count(self.address, pending=True)
        try:  # estimation runs the call: a payment the contract refuses stops here
            probe = await self.chain.build_and_sign(self.signer, call, nonce=chain_next)
        except ChainRetryableError:
            raise
        except ChainError as exc:
            await self._defer(st, str(exc))
            report.deferred += 1
            return
        now = self.clock.now()
        async with self.db.transaction() as s:
            row = await repo.lock_nonce(s, self.address)
            current = await repo.get(s, st.id, lock=True)
            if current is None or current.status != PENDING:
                return
            nonce = chain_next if row is None else max(row.next_nonce, chain_next)
            # Gas, fees and nonce given: this only signs, locally.
            signed = await self.chain.build_and_sign(
                self.signer, call, nonce=nonce, fees=probe.fees, gas=probe.gas
            )
            self._at("after_sign_before_record", st.id)
            await repo.add_transaction(s, self._tx_row(st.id, signed, now))
            if row is None:
                await repo.add_nonce(
                    s, SignerNonce(address=self.address, next_nonce=nonce + 1, updated_at=now)
                )
            else:
                row.next_nonce, row.updated_at = nonce + 1, now
            await repo.transition(
                s,
                st.id,
                PENDING,
                status=SIGNED,
                nonce=nonce,
                tx_hash=signed.tx_hash,
                last_error=None,
                updated_at=now,
            )
        report.signed += 1
        log.info("settlement_signed", settlement_id=str(st.id), nonce=nonce, tx_hash=signed.tx_hash)
        self._at("after_sign", st.id)

    @staticmethod
    def _tx_row(settlement_id: uuid.UUID, signed: SignedTx, now: datetime) -> SettlementTx:
        return SettlementTx(
            id=uuid.uuid4(),
            settlement_id=settlement_id,
            tx_hash=signed.tx_hash,
            raw=signed.raw,
            sender=signed.sender,
            nonce=signed.nonce,
            gas=signed.gas,
            max_fee_per_gas=signed.fees.max_fee_per_gas,
            max_priority_fee_per_gas=signed.fees.max_priority_fee_per_gas,
            created_at=now,
            broadcast_at=None,
        )

    async def _defer(self, st: Settlement, error: str) -> None:
        tries = st.tries + 1
        async with self.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                PENDING,
                tries=tries,
                last_error=error[:2000],
                updated_at=self.clock.now(),
            )
        self._raise_alert(
            "settlement_refused",
            st,
            error=error,
            tries=tries,
            retry_in_seconds=self.config.retry_delay(tries),
        )

    # -- 3. broadcast --------------------------------------------------------------------------

    async def _broadcast_signed(self, report: PassReport) -> None:
        for st in await self._load([SIGNED]):
            txs = await self._transactions(st.id)
            if not txs or not await self._send(st, txs[-1], txs):
                continue
            self._at("after_broadcast", st.id)
            now = self.clock.now()
            async with self.db.transaction() as s:
                await repo.transition(s, st.id, SIGNED, status=BROADCAST, updated_at=now)
                await repo.mark_broadcast(s, txs[-1].tx_hash, now)
            report.broadcast += 1

    async def _send(self, st: Settlement, tx: SettlementTx, txs: Sequence[SettlementTx]) -> bool:
        """Send a stored raw transaction; False when the node refused it (recorded)."""
        try:
            await self.chain.send_raw(tx.raw)
            return True
        except ChainRetryableError:
            raise
        except NonceTooLow:
            # The nonce is used: by one of ours (mined; the receipt step sees it) or by a
            # transaction this worker never signed — then this intent can never be mined.
            if await self._find_receipt(txs) is not None:
                return True
            await self._nonce_taken(st, tx)
            return False
        except ChainError as exc:
            async with self.db.transaction() as s:
                await repo.transition(
                    s,
                    st.id,
                    [SIGNED, BROADCAST],
                    last_error=str(exc)[:2000],
                    updated_at=self.clock.now(),
                )
            log.warning("settlement_send_refused", settlement_id=str(st.id), detail=str(exc))
            return False

    async def _nonce_taken(self, st: Settlement, tx: SettlementTx) -> None:
        error = (
            f"nonce {tx.nonce} of {tx.sender} was used by a transaction this server did not "
            "sign; the entries stay attached until an operator checks the chain"
        )
        async with self.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                [SIGNED, BROADCAST],
                status=FAILED,
                last_error=error,
                updated_at=self.clock.now(),
            )
        self._raise_alert("settlement_nonce_taken", st, error=error)

    # -- 4. receipt ----------------------------------------------------------------------------

    async def _find_receipt(self, txs: Sequence[SettlementTx]) -> Receipt | None:
        for tx in reversed(txs):
            found = await self.chain.receipt(tx.tx_hash)
            if found is not None:
                return found
        return None

    async def _check_receipts(self, report: PassReport, *, rebroadcast: bool) -> None:
        for st in await self._load([BROADCAST]):
            txs = await self._transactions(st.id)
            if not txs:
                continue
            found = await self._find_receipt(txs)
            if found is not None:
                self._at("after_receipt", st.id)
                async with self.db.transaction() as s:
                    await repo.transition(
                        s,
                        st.id,
                        BROADCAST,
                        status=MINED,
                        tx_hash=found.tx_hash,
                        block_number=found.block_number,
                        block_hash=found.block_hash,
                        updated_at=self.clock.now(),
                    )
                report.mined += 1
                continue
            latest = txs[-1]
            dropped = await self.chain.get_transaction(latest.tx_hash) is None
            if dropped or rebroadcast:  # the node lost it, or may have (we restarted)
                sent = await self._send(st, latest, txs)
                report.rebroadcast += sent
                if dropped or not sent:
                    continue
            waited = self.clock.now() - (latest.broadcast_at or latest.created_at)
            if waited >= timedelta(seconds=self.config.fee_bump_seconds) and await self._bump(
                st, latest
            ):
                report.bumped += 1

    async def _bump(self, st: Settlement, latest: SettlementTx) -> bool:
        """Replace the pending transaction: same nonce, same gas, higher fees; stored first."""
        call = await self._call(st)
        old = Fees(latest.max_fee_per_gas, latest.max_priority_fee_per_gas)
        fees = bumped_fees(old, await self.chain.suggest_fees(), self.config.fee_bump_percent)
        ceiling = self.config.max_fee_per_gas
        if ceiling and fees.max_fee_per_gas > ceiling:
            # Keep waiting at the current price rather than outbid the configured ceiling.
            log.warning(
                "settlement_fee_ceiling",
                settlement_id=str(st.id),
                wanted_max_fee_per_gas=fees.max_fee_per_gas,
                ceiling=ceiling,
            )
            return False
        now = self.clock.now()
        async with self.db.transaction() as s:
            current = await repo.get(s, st.id, lock=True)
            if current is None or current.status != BROADCAST:
                return False
            signed = await self.chain.build_and_sign(
                self.signer, call, nonce=latest.nonce, fees=fees, gas=latest.gas
            )
            self._at("after_sign_before_record", st.id)
            row = self._tx_row(st.id, signed, now)
            await repo.add_transaction(s, row)
            await repo.transition(s, st.id, BROADCAST, tx_hash=signed.tx_hash, updated_at=now)
        log.warning(
            "settlement_fee_bump",
            settlement_id=str(st.id),
            nonce=latest.nonce,
            max_fee_per_gas=fees.max_fee_per_gas,
            tx_hash=signed.tx_hash,
        )
        txs = [*await self._transactions(st.id)]
        if await self._send(st, row, txs):
            async with self.db.transaction() as s:
                await repo.mark_broadcast(s, row.tx_hash, self.clock.now())
        return True

    # -- 5. confirm ----------------------------------------------------------------------------

    async def _confirm_mined(self, report: PassReport) -> None:
        mined = await self._load([MINED])
        if not mined:
            return
        head = await self.chain.block_number()
        depth = max(self.config.confirmations, 1)
        for st in mined:
            assert st.tx_hash is not None and st.block_number is not None
            found = await self.chain.receipt(st.tx_hash)
            if found is None or self._moved(st, found):
                await self._reorged(st)
                report.reorged += 1
                continue
            if head - found.block_number + 1 < depth:
                continue
            if found.ok:
                await self._confirm(st)
                report.confirmed += 1
            else:
                await self._reverted(st, found)
                report.reverted += 1

    @staticmethod
    def _moved(st: Settlement, found: Receipt) -> bool:
        if found.block_number != st.block_number:
            return True
        return bool(found.block_hash and st.block_hash and found.block_hash != st.block_hash)

    async def _reorged(self, st: Settlement) -> None:
        async with self.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                MINED,
                status=BROADCAST,
                block_number=None,
                block_hash=None,
                updated_at=self.clock.now(),
            )
        log.warning("settlement_reorg", settlement_id=str(st.id), block=st.block_number)
        txs = await self._transactions(st.id)
        mined = [t for t in txs if t.tx_hash == st.tx_hash] or list(txs[-1:])
        if mined:
            await self._send(st, mined[0], txs)

    async def _confirm(self, st: Settlement) -> None:
        now = self.clock.now()
        async with self.db.transaction() as s:
            if await repo.transition(
                s, st.id, MINED, status=CONFIRMED, confirmed_at=now, updated_at=now
            ):
                await repo.settle_entries(s, st.id, now)
                await self._emit(s, "payment.settled", st, block_number=st.block_number)
        log.info("settlement_confirmed", settlement_id=str(st.id), tx_hash=st.tx_hash)

    async def _reverted(self, st: Settlement, found: Receipt) -> None:
        error = f"transaction {found.tx_hash} reverted in block {found.block_number}"
        async with self.db.transaction() as s:
            if await repo.transition(
                s, st.id, MINED, status=REVERTED, last_error=error, updated_at=self.clock.now()
            ):
                await repo.release_entries(s, st.id)
                await self._emit(s, "payment.reverted", st, error=error)
        self._raise_alert("settlement_reverted", st, error=error, tx_hash=found.tx_hash)

    async def _emit(self, s: AsyncSession, kind: str, st: Settlement, **extra: Any) -> None:
        """Tell the payer and the payee (accounts that are addresses) in this transaction."""
        if self.events is None:
            return
        data = {
            "settlement_id": str(st.id),
            "payer": st.payer,
            "payee": st.payee,
            "amount": str(st.amount),
            "tx_hash": st.tx_hash,
            **extra,
        }
        for owner in dict.fromkeys((st.payee, st.payer)):
            if owner.startswith("0x") and len(owner) == 42:
                await events_service.emit(s, self.events, kind, owner, data, str(st.id))

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
