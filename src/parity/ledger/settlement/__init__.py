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
transaction took (:mod:`parity.ledger.settlement.service`). ``transferPaymentRef`` adds the
contract's own refusal of a reused ref.

One signer, one worker: on PostgreSQL a pass holds a session advisory lock and skips when
another replica has it; on SQLite the server's lock file already makes the process single.

Layout: the steps are plain async functions over a :class:`SettlementContext` (the database,
chain, signer, clock, config, events, crash hook and alert channel): 1 to 3 in
:mod:`.signing`, 4 and 5 in :mod:`.tracking`, over the chain helpers in :mod:`.sending`.
:mod:`.worker` runs a pass and the loop (:class:`parity.jobs.loop.BackgroundLoop`, under the
session advisory lock); :mod:`.repository` holds all SQL; :mod:`.service` the operator use
cases (list, release); :mod:`.policy` the knobs and pure pieces.
"""

from parity.ledger.settlement.context import SettlementContext
from parity.ledger.settlement.policy import (
    HOOK_POINTS,
    PassReport,
    SettlementConfig,
    bumped_fees,
    payment_ref,
)
from parity.ledger.settlement.worker import (
    LOCK_KEY,
    SettlementWorker,
    run_pass,
    settlement_worker,
)

__all__ = [
    "HOOK_POINTS",
    "LOCK_KEY",
    "PassReport",
    "SettlementConfig",
    "SettlementContext",
    "SettlementWorker",
    "bumped_fees",
    "payment_ref",
    "run_pass",
    "settlement_worker",
]
