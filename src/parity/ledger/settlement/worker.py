"""The settlement worker: one pass runs every step in order (see :mod:`parity.ledger.settlement`),
and a :class:`~parity.jobs.loop.BackgroundLoop` runs passes under a session advisory lock, so
one replica settles at a time (on SQLite the server's lock file already makes the process
single)."""

from __future__ import annotations

from parity.chain.errors import ChainRetryableError
from parity.chain.ports import ChainClient, Signer
from parity.clock import Clock
from parity.config import Settings
from parity.db.session import Database
from parity.events.service import EventDeps
from parity.jobs.locks import Serialized, SessionAdvisoryLock, job_key
from parity.jobs.loop import BackgroundLoop, MetricsHook
from parity.ledger.settlement.context import SettlementContext, log
from parity.ledger.settlement.policy import Alert, Hook, PassReport, SettlementConfig
from parity.ledger.settlement.signing import broadcast_signed, make_intents, sign_pending
from parity.ledger.settlement.tracking import check_receipts, confirm_mined
from parity.ledger.signer import load_settlement_signer

LOCK_KEY = job_key("settlement")


async def run_pass(ctx: SettlementContext, *, first: bool) -> PassReport:
    """Every step once. ``first`` (a worker's first pass, e.g. after a restart) also checks the
    signer owns the StakeWallet and re-broadcasts every unmined transaction, which the node may
    have lost. A chain that does not answer, or has no StakeWallet code at the configured
    address, ends the pass early with ``unavailable`` set."""
    report = PassReport()
    try:
        await make_intents(ctx, report)
        if not await contract_present(ctx):
            report.unavailable = True
            return report
        if first:
            await check_owner(ctx)
        await sign_pending(ctx, report)
        await broadcast_signed(ctx, report)
        await check_receipts(ctx, report, rebroadcast=first)
        await confirm_mined(ctx, report)
    except ChainRetryableError as exc:
        report.unavailable = True
        log.warning("settlement_chain_unavailable", detail=str(exc))
    return report


async def contract_present(ctx: SettlementContext) -> bool:
    """Whether the StakeWallet has code. Without it (a chain reset under the server, e.g. a
    restarted dev-chain before the contracts are deployed again, or a wrong address) nothing
    is signed, sent or confirmed: a call to an address without code is mined as a success
    that moves nothing. Alerted once until the code is back."""
    address = ctx.chain.stake_wallet_address
    if address and await ctx.chain.code_at(address):
        if ctx.missing_contract:
            ctx.missing_contract = False
            log.info("settlement_contract_back", stake_wallet=address)
        return True
    if not ctx.missing_contract:
        ctx.missing_contract = True
        ctx.send_alert(
            "settlement_no_contract",
            {
                "stake_wallet": address,
                "error": (
                    f"no contract code at the StakeWallet address {address}: was the chain "
                    "reset (e.g. a restarted dev-chain)? Nothing is settled until the "
                    "contracts are there (deploy them again and point "
                    "FILECOIN_STAKE_WALLET_ADDRESS at them)"
                ),
            },
        )
    return False


async def check_owner(ctx: SettlementContext) -> None:
    """Say at once when the signer cannot settle (only the StakeWallet's owner may move
    stake); payments would otherwise only show it as refused estimations."""
    owner = await ctx.chain.stake_wallet_owner()
    if owner != ctx.address:
        ctx.send_alert("settlement_signer_not_owner", {"signer": ctx.address, "owner": owner})


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
        metrics: MetricsHook | None = None,
    ) -> None:
        cfg = config or SettlementConfig()
        self.ctx = SettlementContext(db, chain, signer, clock, cfg, hook, alert, events)
        self._first_pass = True
        # A pass started while another runs in this process waits for it; another replica's
        # pass makes this one skip.
        lock = Serialized(SessionAdvisoryLock(db, LOCK_KEY))
        self.loop: BackgroundLoop[bool, PassReport] = BackgroundLoop(
            "settlement",
            self._pass,
            lock,
            interval=cfg.interval_seconds,
            clock=clock,
            count=PassReport.total,
            metrics=metrics,
            log_ticks=False,
        )

    @property
    def address(self) -> str:
        return self.ctx.address

    async def run_once(self) -> PassReport:
        """One pass over every step (skipped while another replica runs one). The first pass
        that completes re-broadcasts every unmined transaction. A crash hook's exception
        propagates."""
        result = await self.loop.run_tick()
        return result.value if result.value is not None else PassReport(skipped=True)

    async def _pass(self, _held: bool) -> PassReport:
        report = await run_pass(self.ctx, first=self._first_pass)
        if not report.unavailable:
            self._first_pass = False
        counts = report.counts()
        if counts:
            log.info("settlement_pass", **counts)
        return report

    def start(self) -> None:
        self.loop.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop at a pass boundary; a pass still running after ``timeout`` is cancelled (every
        step is its own transaction, so the next start continues from where it stopped)."""
        await self.loop.stop(timeout)


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
