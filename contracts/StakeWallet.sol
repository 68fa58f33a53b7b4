// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title StakeWallet
/// @notice Token stakes keyed by a string id. Keeps the interface of the StakeWallet the original
///         network deployed (addFunds, getBalance, getWalletInfo, transferPayment, withdrawFunds,
///         updateWalletAddress, wallets, token, owner, recoverTokens and their events) and adds
///         transferPaymentRef, which refuses a payment reference it has already seen, so a
///         settlement that is broadcast twice can never pay twice.
/// @dev    Stake ids are normally the owner's lowercase 0x address; such an id can only ever be
///         created bound to that very address, so nobody can claim another account's id first.
///         Any other string (the original runner's device ids) is bound to the wallet that first
///         funds it.
contract StakeWallet is Ownable {
    using SafeERC20 for IERC20;

    struct Wallet {
        uint256 balance;
        string deviceId;
        address walletAddress;
        bool exists;
    }

    IERC20 public immutable token;
    mapping(string => Wallet) public wallets;
    mapping(bytes32 => bool) private usedRefs;
    /// @notice Sum of every stake: the tokens recoverTokens must leave in place.
    uint256 public totalStaked;

    event FundsAdded(string deviceId, address indexed wallet, uint256 amount);
    event FundsWithdrawn(string deviceId, address indexed wallet, uint256 amount);
    event TaskPayment(string creatorDeviceId, string solverDeviceId, uint256 amount);
    event PaymentRef(bytes32 indexed ref, string creatorId, string solverId, uint256 amount);
    event WalletAddressUpdated(string deviceId, address indexed oldWallet, address indexed newWallet);
    event TokenRecovered(address indexed token, uint256 amount);

    constructor(address token_) Ownable(msg.sender) {
        require(token_ != address(0), "StakeWallet: token is the zero address");
        token = IERC20(token_);
    }

    // ------------------------------------------------------------------ stakers

    /// @notice Move `amount` tokens from the caller (after approve) into the stake `deviceId`,
    ///         creating it bound to `wallet` when new. An existing stake must name its own wallet.
    function addFunds(uint256 amount, string calldata deviceId, address wallet) external {
        require(amount > 0, "StakeWallet: amount is zero");
        require(bytes(deviceId).length > 0, "StakeWallet: empty id");
        require(wallet != address(0), "StakeWallet: wallet is the zero address");
        Wallet storage w = wallets[deviceId];
        if (w.exists) {
            require(w.walletAddress == wallet, "StakeWallet: id belongs to another wallet");
        } else {
            _checkBinding(deviceId, wallet);
            w.deviceId = deviceId;
            w.walletAddress = wallet;
            w.exists = true;
        }
        w.balance += amount;
        totalStaked += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit FundsAdded(deviceId, wallet, amount);
    }

    /// @notice Return `amount` of the stake `deviceId` to its wallet. Only that wallet may call.
    function withdrawFunds(string calldata deviceId, uint256 amount) external {
        Wallet storage w = wallets[deviceId];
        require(w.exists, "StakeWallet: no such stake");
        require(msg.sender == w.walletAddress, "StakeWallet: caller does not own this stake");
        require(amount > 0, "StakeWallet: amount is zero");
        require(w.balance >= amount, "StakeWallet: insufficient stake");
        w.balance -= amount;
        totalStaked -= amount;
        token.safeTransfer(w.walletAddress, amount);
        emit FundsWithdrawn(deviceId, w.walletAddress, amount);
    }

    /// @notice Rebind the stake `deviceId` to `newWallet`. Only its current wallet may call,
    ///         and an address id stays bound to its own address.
    function updateWalletAddress(string calldata deviceId, address newWallet) external {
        Wallet storage w = wallets[deviceId];
        require(w.exists, "StakeWallet: no such stake");
        require(msg.sender == w.walletAddress, "StakeWallet: caller does not own this stake");
        require(newWallet != address(0), "StakeWallet: wallet is the zero address");
        _checkBinding(deviceId, newWallet);
        address old = w.walletAddress;
        w.walletAddress = newWallet;
        emit WalletAddressUpdated(deviceId, old, newWallet);
    }

    // ------------------------------------------------------------------ views

    function getBalance(string calldata deviceId) external view returns (uint256) {
        return wallets[deviceId].balance;
    }

    function getWalletInfo(string calldata deviceId)
        external
        view
        returns (uint256 balance, string memory id, address walletAddress, bool exists)
    {
        Wallet storage w = wallets[deviceId];
        return (w.balance, w.deviceId, w.walletAddress, w.exists);
    }

    /// @notice Whether transferPaymentRef has already accepted `ref`.
    function refUsed(bytes32 ref) external view returns (bool) {
        return usedRefs[ref];
    }

    // ------------------------------------------------------------------ owner (settlement)

    /// @notice Move `amount` of stake from `creatorDeviceId` to `solverDeviceId`. Owner only.
    function transferPayment(
        string calldata creatorDeviceId,
        string calldata solverDeviceId,
        uint256 amount
    ) external onlyOwner {
        _pay(creatorDeviceId, solverDeviceId, amount);
    }

    /// @notice transferPayment that refuses a `ref` it has seen before. Owner only.
    function transferPaymentRef(
        string calldata creatorId,
        string calldata solverId,
        uint256 amount,
        bytes32 ref
    ) external onlyOwner {
        require(ref != bytes32(0), "StakeWallet: empty ref");
        require(!usedRefs[ref], "StakeWallet: ref already used");
        usedRefs[ref] = true;
        _pay(creatorId, solverId, amount);
        emit PaymentRef(ref, creatorId, solverId, amount);
    }

    /// @notice Send tokens held here that are not stake (sent by mistake) to the owner.
    function recoverTokens(address tokenAddress, uint256 amount) external onlyOwner {
        if (tokenAddress == address(token)) {
            uint256 held = token.balanceOf(address(this));
            require(held - totalStaked >= amount, "StakeWallet: amount exceeds unstaked tokens");
        }
        IERC20(tokenAddress).safeTransfer(owner(), amount);
        emit TokenRecovered(tokenAddress, amount);
    }

    // ------------------------------------------------------------------ internals

    function _pay(string calldata fromId, string calldata toId, uint256 amount) private {
        require(amount > 0, "StakeWallet: amount is zero");
        Wallet storage from = wallets[fromId];
        require(from.exists, "StakeWallet: no such payer stake");
        require(from.balance >= amount, "StakeWallet: insufficient stake");
        Wallet storage to = wallets[toId];
        if (!to.exists) {
            // A payee with no stake yet: an address id is created bound to its address.
            (bool isAddress, address bound) = _parseAddressId(toId);
            require(isAddress, "StakeWallet: no such payee stake");
            to.deviceId = toId;
            to.walletAddress = bound;
            to.exists = true;
        }
        from.balance -= amount;
        to.balance += amount;
        emit TaskPayment(fromId, toId, amount);
    }

    function _checkBinding(string calldata id, address wallet) private pure {
        (bool isAddress, address bound) = _parseAddressId(id);
        require(!isAddress || bound == wallet, "StakeWallet: address id must be its own wallet");
    }

    /// @dev "0x" followed by exactly 40 lowercase hex digits.
    function _parseAddressId(string calldata id) private pure returns (bool, address) {
        bytes calldata b = bytes(id);
        if (b.length != 42 || b[0] != "0" || b[1] != "x") {
            return (false, address(0));
        }
        uint160 value = 0;
        for (uint256 i = 2; i < 42; i++) {
            uint8 c = uint8(b[i]);
            uint8 digit;
            if (c >= 48 && c <= 57) {
                digit = c - 48;
            } else if (c >= 97 && c <= 102) {
                digit = c - 87;
            } else {
                return (false, address(0));
            }
            value = value * 16 + digit;
        }
        return (true, address(value));
    }
}
