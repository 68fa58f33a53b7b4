"""`parity-server stake | balance | withdraw | dev-chain`: the wallet's side of staking.

stake, balance and withdraw talk to the chain directly (FILECOIN_RPC, the StakeWallet at
FILECOIN_STAKE_WALLET_ADDRESS) and sign locally with the encrypted keystore. Amounts are typed
in tokens ("5", "1.5") and converted with the token's own decimals(); nothing is rounded.
dev-chain runs a whole local chain: anvil from npm with our contracts deployed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

from parity.chain.errors import ChainError, ChainRetryableError
from parity.chain.factory import open_chain_client
from parity.chain.keystore import KeystoreError, load_account, read_address
from parity.chain.ports import ChainClient, Receipt
from parity.chain.stake_ids import StakeIdError, stake_id
from parity.chain.startup import check_chain
from parity.cli.auth import default_keystore_path
from parity.cli.credentials import credentials_path
from parity.cli.ledger_view import LedgerView, ledger_balance
from parity.cli.passwords import password_from_env_or_prompt
from parity.cli.server_url import ServerUrlError, resolve_server_url
from parity.config import Settings, load_settings
from parity.core.billing.units import AmountError, format_token_amount
from parity.core.billing.units import parse_token_amount as parse_tokens
from parity.errors import ConfigError

T = TypeVar("T")
NOT_AVAILABLE = "n/a (ledger not available)"

ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="Path of a .env file (default ./.env)")
]
KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        metavar="PATH",
        help="Keystore file (default: $PARITY_HOME/keystore.json, else ~/.parity/keystore.json). "
        "Its password comes from PARITY_KEYSTORE_PASSWORD or a prompt.",
    ),
]
AmountOpt = Annotated[
    str, typer.Option("--amount", help="Tokens, e.g. 5 or 1.5 (converted with decimals()).")
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device-id",
        envvar="RUNNER_DEVICE_ID",
        help="Only with STAKE_ID_MODE=device: the device id the original runner staked under.",
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _settings(config: str | None) -> Settings:
    try:
        settings = load_settings(config_file=config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not settings.filecoin_rpc or not settings.filecoin_stake_wallet_address:
        raise _fail(
            "FILECOIN_RPC and FILECOIN_STAKE_WALLET_ADDRESS must be set (in .env or the "
            "environment); `parity-server dev-chain` writes them for a local chain"
        )
    return settings


def _keystore(path: Path | None) -> Path:
    return path.expanduser() if path is not None else default_keystore_path()


def _unlock(path: Path | None) -> LocalAccount:
    keystore = _keystore(path)
    try:
        return load_account(keystore, password_from_env_or_prompt(confirm=False))
    except KeystoreError as exc:
        raise _fail(str(exc)) from None


def _stake_id(settings: Settings, address: str, device_id: str | None) -> str:
    try:
        return stake_id(address, settings.stake_id_mode, device_id)
    except StakeIdError as exc:
        raise _fail(str(exc)) from None


def _run(settings: Settings, work: Callable[[ChainClient], Awaitable[T]]) -> T:
    """Open the chain client, verify chain id and contracts, run ``work``, map chain errors to
    a one-line message and exit status 1."""

    async def go() -> T:
        client = open_chain_client(settings)
        assert client is not None  # _settings() checked FILECOIN_RPC
        try:
            status = await check_chain(client, settings)
            if status.state != "ok":
                raise _fail(f"chain {status.state}: {status.message}")
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(go())
    except ChainRetryableError as exc:
        raise _fail(f"{exc.message} (try again later)") from None
    except ChainError as exc:
        raise _fail(exc.message) from None
    except AmountError as exc:
        raise _fail(str(exc)) from None


class _Printer:
    def __init__(self, symbol: str, decimals: int) -> None:
        self.symbol = symbol
        self.decimals = decimals

    @classmethod
    async def of(cls, settings: Settings, client: ChainClient) -> _Printer:
        """Amounts in the token's own units and symbol (read from the contract; the
        FILECOIN_TOKEN_SYMBOL setting only when the token has no symbol())."""
        try:
            symbol = await client.token_symbol() or settings.filecoin_token_symbol
        except ChainRetryableError:
            raise
        except ChainError:
            symbol = settings.filecoin_token_symbol
        return cls(symbol, await client.token_decimals())

    def amount(self, base_units: int) -> str:
        return f"{format_token_amount(base_units, self.decimals)} {self.symbol}"

    def detailed(self, base_units: int) -> str:
        return f"{self.amount(base_units)} ({base_units} base units)"

    @staticmethod
    def tx(label: str, receipt: Receipt) -> None:
        typer.echo(f"{label}: tx {receipt.tx_hash} (block {receipt.block_number})")


def stake(
    amount: AmountOpt,
    keystore: KeystoreOpt = None,
    device_id: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Stake tokens: approve the StakeWallet (when the allowance is short), then addFunds."""
    settings = _settings(config)
    account = _unlock(keystore)
    sid = _stake_id(settings, account.address, device_id)

    async def work(client: ChainClient) -> None:
        show = await _Printer.of(settings, client)
        base = parse_tokens(amount, show.decimals)
        held = await client.token_balance(account.address)
        if held < base:
            raise _fail(f"the wallet holds {show.amount(held)}, less than {show.amount(base)}")
        spender = client.stake_wallet_address
        if await client.allowance(account.address, spender) < base:
            show.tx("approve", await client.approve(account, base))
        show.tx("addFunds", await client.add_funds(account, sid, base, wallet=account.address))
        typer.echo(f"stake id: {sid}")
        typer.echo(f"stake: {show.detailed(await client.stake_of(sid))}")

    _run(settings, work)


def withdraw(
    amount: AmountOpt,
    keystore: KeystoreOpt = None,
    device_id: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Withdraw staked tokens back to the wallet (only the stake's own wallet can)."""
    settings = _settings(config)
    account = _unlock(keystore)
    sid = _stake_id(settings, account.address, device_id)

    async def work(client: ChainClient) -> None:
        show = await _Printer.of(settings, client)
        base = parse_tokens(amount, show.decimals)
        staked = await client.stake_of(sid)
        if staked < base:
            raise _fail(f"the stake is {show.amount(staked)}, less than {show.amount(base)}")
        show.tx("withdrawFunds", await client.withdraw(account, sid, base))
        typer.echo(f"stake id: {sid}")
        typer.echo(f"stake: {show.detailed(await client.stake_of(sid))}")
        typer.echo(f"wallet: {show.detailed(await client.token_balance(account.address))}")

    _run(settings, work)


def _keystore_address(path: Path) -> str | None:
    """The keystore's address (lowercase), None when there is no readable keystore."""
    try:
        return read_address(path).lower()
    except KeystoreError:
        return None


def balance(
    keystore: KeystoreOpt = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Show this address instead of the keystore's."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="URL",
            help="The server whose ledger gives reservations and earnings (default: "
            "PARITY_SERVER_URL, the last sign-in, then SERVER_PUBLIC_URL or "
            "SERVER_HOST:SERVER_PORT); asked with this address's own session only.",
        ),
    ] = None,
    device_id: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Wallet tokens and stake (from the chain); available and pending (from the ledger)."""
    settings = _settings(config)
    path = _keystore(keystore)
    try:
        who = address or read_address(path)
    except KeystoreError as exc:
        raise _fail(f"{exc} (or pass --address)") from None
    sid = _stake_id(settings, who, device_id)

    async def work(client: ChainClient) -> tuple[_Printer, int, int]:
        show = await _Printer.of(settings, client)
        return show, await client.token_balance(who), await client.stake_of(sid)

    show, held, staked = _run(settings, work)
    typer.echo(f"address: {who.lower()}")
    typer.echo(f"stake id: {sid}")
    typer.echo(f"wallet: {show.detailed(held)}")
    typer.echo(f"stake: {show.detailed(staked)}")
    minimum = settings.min_stake
    if settings.min_stake_tokens:
        minimum = parse_tokens(settings.min_stake_tokens, show.decimals, allow_zero=True)
    if minimum and staked < minimum:
        typer.echo(f"note: below the minimum stake ({show.amount(minimum)})")
    # The keystore signs `who` in only when it is that address's (not another --address).
    own = path if (address is None or _keystore_address(path) == who.lower()) else None
    try:
        choice = resolve_server_url(server, credentials=credentials_path(path), config=config)
        ledger = ledger_balance(choice, credentials_path(path), who, own)
    except ServerUrlError as exc:
        ledger = LedgerView(why_not=str(exc))
    for label, key in (
        ("available after reservations", "available"),
        ("pending earnings", "pending_earnings"),
    ):
        value = ledger.amounts.get(key)
        typer.echo(f"{label}: {show.detailed(value) if value is not None else NOT_AVAILABLE}")
    if ledger.why_not:
        typer.echo(f"note: ledger not asked: {ledger.why_not}", err=True)


def dev_chain(
    port: Annotated[int, typer.Option("--port", help="anvil's JSON-RPC port.")] = 8545,
    env_file: Annotated[
        Path, typer.Option("--env-file", help="Write the chain settings into this .env file.")
    ] = Path(".env"),
    accounts: Annotated[
        int, typer.Option("--accounts", min=1, max=100, help="Test accounts to fund.")
    ] = 10,
    mint: Annotated[
        str, typer.Option("--mint", help="Tokens minted to every test account.")
    ] = "1000000",
) -> None:
    """Run a local chain: anvil (chain id 314159) + ParityToken + StakeWallet, test accounts
    funded; the addresses, the settlement signer (account 0, the contracts' owner) and
    FILECOIN_CONFIRMATIONS=1 written to .env. Runs until Ctrl-C."""
    # Imported here: web3 (under devchain) is slow to import and only this command needs it.
    from parity.chain.devchain import (
        Anvil,
        DevChainError,
        PortInUseError,
        deploy_dev_contracts,
        dev_accounts,
        find_anvil,
    )

    _check_env_file(env_file)
    binary = find_anvil()
    if binary is None:
        raise _fail(
            "anvil not found: run `make contracts` (npm installs it under contracts/"
            "node_modules), put anvil on PATH, or set ANVIL_BIN"
        )
    try:
        mint_each = parse_tokens(mint, 18)
    except AmountError as exc:
        raise _fail(f"--mint: {exc}") from None
    node = Anvil(binary, port=port, accounts=accounts)
    # Ctrl-C and SIGTERM stop anvil. Both handlers are set here: a process started in the
    # background by a non-interactive shell inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        node.start()
    except PortInUseError as exc:
        raise _fail(str(exc)) from None
    except (DevChainError, OSError) as exc:
        raise _fail(f"{exc} (is port {port} already in use?)") from None
    try:
        keys = dev_accounts(accounts)
        deployed = asyncio.run(
            deploy_dev_contracts(node.rpc_url, keys[0], [k.address for k in keys], mint_each)
        )
        # Account 0 deployed (and owns) the StakeWallet: it is the settlement signer. anvil
        # mines a block per transaction only, so one confirmation is all a payment gets.
        env = {
            **deployed.env(),
            "SETTLEMENT_PRIVATE_KEY": "0x" + bytes(keys[0].key).hex(),
            "FILECOIN_CONFIRMATIONS": "1",
        }
        _write_env_file(env_file, env)
        _print_dev_chain(env, keys, mint, env_file)
        node.wait()
    except KeyboardInterrupt:
        typer.echo("\nstopping anvil")
    except (ChainError, DevChainError) as exc:
        raise _fail(f"deploying to anvil failed: {exc}") from None
    finally:
        node.stop()


def _check_env_file(env_file: Path) -> None:
    """Refuse an --env-file that cannot be written before anvil starts and deploys."""
    if env_file.is_dir():
        raise _fail(f"--env-file: {env_file} is a directory")
    if not env_file.parent.is_dir():
        raise _fail(f"--env-file: no such directory: {env_file.parent}")


def _write_env_file(env_file: Path, env: dict[str, str]) -> None:
    from parity.chain.devchain import write_env_file

    try:
        write_env_file(env_file, env)
    except OSError as exc:
        raise _fail(f"--env-file: cannot write {env_file}: {exc.strerror or exc}") from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_dev_chain(
    env: dict[str, str], keys: list[LocalAccount], mint: str, env_file: Path
) -> None:
    for key, value in env.items():
        typer.echo(f"{key}={value}")
    typer.echo(f"(written to {env_file})")
    typer.echo("")
    typer.echo(f"test accounts, {mint} tokens each (anvil's PUBLIC dev keys: never use them")
    typer.echo("for anything of value). Account 0 owns the contracts (the settlement signer).")
    for i, account in enumerate(keys):
        typer.echo(f"  ({i}) {account.address}  key 0x{bytes(account.key).hex()}")
    typer.echo("")
    typer.echo(
        "import one into a keystore of its own: parity-server auth --private-key <key> "
        "--keystore ~/.parity/wallet.json; then parity-server stake --amount 5 "
        "--keystore ~/.parity/wallet.json"
    )
    typer.echo(f"anvil is serving {env['FILECOIN_RPC']}; Ctrl-C stops it (state is not kept)")


def register_chain_commands(app: typer.Typer) -> None:
    app.command("stake")(stake)
    app.command("withdraw")(withdraw)
    app.command("balance")(balance)
    app.command("dev-chain")(dev_chain)
