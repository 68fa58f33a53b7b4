"""The start-up check: is the configured node on the right chain, and are our contracts there?

``check_chain`` never raises: it returns a :class:`ChainStatus` whose ``state`` is what
``/api/status`` shows as ``backends.chain``:

* ``off`` — FILECOIN_RPC is unset; chain features are off.
* ``ok`` — chain id matches, both contracts have code, ``decimals()`` answers.
* ``wrong_chain`` — the node serves another chain id than FILECOIN_CHAIN_ID. The server refuses
  to start (:func:`refuse_wrong_chain`): signing for the wrong chain id would fail every payment,
  and reading another chain's balances would be worse.
* ``no_contract`` — no StakeWallet or token code at the configured address (or not set).
* ``unreachable`` — the node did not answer. The server starts anyway and re-checks later.

Every verdict but ``off`` is re-checked once it is RECHECK_SECONDS old (by the status page), so
a node that goes away after start-up shows ``unreachable`` and one that comes back ``ok``. A
re-check that finds another genesis block than before (the chain was started again from
scratch under the server, e.g. a restarted dev-chain) logs ``chain_reset`` and says so in
``reset`` until the server restarts, whatever the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from parity.chain.errors import ChainError, ChainRetryableError
from parity.chain.ports import ChainClient
from parity.config import Settings
from parity.errors import ConfigError
from parity.logging import get_logger

log = get_logger("parity.chain")

ChainState = Literal["off", "ok", "wrong_chain", "no_contract", "unreachable"]

# How long a verdict stands before a status request checks again.
RECHECK_SECONDS = 30.0


@dataclass(frozen=True)
class ChainStatus:
    state: ChainState
    message: str = ""
    chain_id: int | None = None
    expected_chain_id: int | None = None
    stake_wallet_address: str | None = None
    token_address: str | None = None
    decimals: int | None = None
    payment_ref: bool | None = None
    reset: str | None = None  # set once a re-check saw the genesis block change
    genesis_hash: str | None = None  # compared between checks, not shown

    def describe(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in asdict(self).items()
            if v is not None and v != "" and k != "genesis_hash"
        }


OFF = ChainStatus("off", "FILECOIN_RPC is not set")


async def check_chain(client: ChainClient | None, settings: Settings) -> ChainStatus:
    """Check the node and the contracts; see the module docstring for the verdicts."""
    if client is None:
        return OFF
    expected = settings.filecoin_chain_id
    try:
        actual = await client.chain_id()
    except ChainError as exc:
        return ChainStatus("unreachable", str(exc), expected_chain_id=expected)
    if actual != expected:
        return ChainStatus(
            "wrong_chain",
            f"FILECOIN_CHAIN_ID is {expected} but the node at FILECOIN_RPC serves chain {actual}",
            chain_id=actual,
            expected_chain_id=expected,
        )
    try:
        genesis: str | None = await client.genesis_hash()
    except ChainError:
        # Only for noticing a reset: a node that does not serve block 0 is still usable.
        genesis = None
    found = ChainStatus("ok", chain_id=actual, expected_chain_id=expected, genesis_hash=genesis)
    return await _check_contracts(client, settings, found)


async def _check_contracts(
    client: ChainClient, settings: Settings, found: ChainStatus
) -> ChainStatus:
    stake_wallet = settings.filecoin_stake_wallet_address.lower()
    if not stake_wallet:
        return replace(
            found, state="no_contract", message="FILECOIN_STAKE_WALLET_ADDRESS is not set"
        )
    found = replace(found, stake_wallet_address=stake_wallet)
    try:
        if not await client.code_at(stake_wallet):
            message = f"no contract code at FILECOIN_STAKE_WALLET_ADDRESS {stake_wallet}"
            return replace(found, state="no_contract", message=message)
        found = replace(found, token_address=await client.token_address())
        if not await client.code_at(found.token_address or ""):
            message = f"no contract code at the token address {found.token_address}"
            return replace(found, state="no_contract", message=message)
        found = replace(
            found,
            decimals=await client.token_decimals(),
            payment_ref=await client.supports_payment_ref(),
        )
    except ChainRetryableError as exc:
        return replace(found, state="unreachable", message=str(exc))
    except ChainError as exc:
        message = f"the contracts do not answer as a StakeWallet and an ERC20 do: {exc}"
        return replace(found, state="no_contract", message=message)
    return found


def refuse_wrong_chain(status: ChainStatus) -> None:
    """Raise ConfigError when the node is reachable and on another chain."""
    if status.state == "wrong_chain":
        raise ConfigError(f"{status.message}; fix FILECOIN_CHAIN_ID or FILECOIN_RPC")


async def check_at_start(client: ChainClient | None, settings: Settings) -> ChainStatus:
    """The start-up check with its consequences: ConfigError on a wrong chain, a warning log
    when the node or the contracts are missing (the server still starts)."""
    status = await check_chain(client, settings)
    refuse_wrong_chain(status)
    if status.state in ("ok", "off"):
        log.info("chain_checked", **status.describe())
    else:
        log.warning("chain_not_ready", **status.describe())
    return status


def is_stale(status: ChainStatus, age_seconds: float) -> bool:
    """Whether a verdict this old is to be checked again: any but "off" (which never
    changes) once it is RECHECK_SECONDS old (a node that was fine at start-up may have gone
    away since, one that was not may be back)."""
    return status.state != "off" and age_seconds >= RECHECK_SECONDS


async def recheck(
    client: ChainClient | None, settings: Settings, status: ChainStatus
) -> ChainStatus:
    """A fresh verdict in place of ``status``, its change logged. A node found on the wrong
    chain only now is logged as an error (the server is already serving; restart it with the
    right settings)."""
    fresh = _compare_genesis(await check_chain(client, settings), status)
    if fresh.state == "wrong_chain":
        log.error("chain_wrong_chain", **fresh.describe())
    elif fresh.state != status.state and fresh.state != "ok":
        log.warning("chain_not_ready", **fresh.describe())
    elif fresh.state != status.state:
        log.info("chain_rechecked", **fresh.describe())
    return fresh


def _compare_genesis(fresh: ChainStatus, before: ChainStatus) -> ChainStatus:
    """``fresh`` with the reset noted (and logged) when its genesis block is not the one seen
    before; a noted reset stays, and a check that could not read the genesis keeps the one
    seen before."""
    if fresh.genesis_hash is None:
        return replace(fresh, genesis_hash=before.genesis_hash, reset=before.reset)
    if before.genesis_hash is None or fresh.genesis_hash == before.genesis_hash:
        return replace(fresh, reset=before.reset)
    reset = (
        f"the chain at FILECOIN_RPC was started again from scratch while this server ran (its "
        f"genesis block is now {fresh.genesis_hash}, was {before.genesis_hash}; e.g. a "
        "restarted dev-chain): payments confirmed before are not on it, stakes must be made "
        "again, and nothing is settled until the contracts are deployed again at "
        "FILECOIN_STAKE_WALLET_ADDRESS (restart the server if their addresses changed)"
    )
    log.error(
        "chain_reset",
        genesis=fresh.genesis_hash,
        previous_genesis=before.genesis_hash,
        state=fresh.state,
    )
    return replace(fresh, reset=reset)
