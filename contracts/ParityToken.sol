// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title ParityToken
/// @notice The network's ERC20 (18 decimals). The owner can mint, which is what a development
///         chain needs to fund test accounts; anyone can burn their own tokens.
contract ParityToken is ERC20, Ownable {
    constructor(string memory name_, string memory symbol_)
        ERC20(name_, symbol_)
        Ownable(msg.sender)
    {}

    /// @notice Create `amount` base units for `to`. Owner only.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @notice Destroy `amount` of the caller's own base units.
    function burn(uint256 amount) external {
        _burn(msg.sender, amount);
    }
}
