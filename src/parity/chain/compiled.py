"""The compiled contracts committed under ``artifacts/`` (written by contracts/compile.js)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

ArtifactName = Literal["ParityToken", "StakeWallet"]


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code

    def constructor_inputs(self) -> list[str]:
        for entry in self.abi:
            if entry.get("type") == "constructor":
                return [str(i["type"]) for i in entry.get("inputs", [])]
        return []


@functools.cache
def load_artifact(name: ArtifactName) -> Artifact:
    text = resources.files("parity.chain").joinpath("artifacts", f"{name}.json").read_text()
    doc = json.loads(text)
    return Artifact(name=str(doc["contractName"]), abi=list(doc["abi"]), bytecode=doc["bytecode"])
