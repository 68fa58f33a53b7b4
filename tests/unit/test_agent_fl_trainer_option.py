"""``parity-runner --fl-trainer``: which local trainer runs ``fl_train`` tasks, refused with a
message that says what to do when PyTorch is missing or the name is unknown (with or without
PyTorch installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parity.agent import cli as runner_cli
from parity.agent.fl import executor, torch_trainer
from parity.core.fl.train import train_local


def test_without_pytorch_the_torch_trainer_is_refused_saying_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch_trainer, "available", lambda: False)
    with pytest.raises(ValueError, match="needs PyTorch: pip install torch"):
        executor.trainer_named("torch")
    assert executor.trainer_named("numpy") is train_local


def test_the_runner_refuses_an_unknown_trainer_naming_the_option(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        runner_cli.app, ["--fl-trainer", "jax", "--keystore", str(tmp_path / "none.json")]
    )
    assert result.exit_code == 2
    assert "--fl-trainer" in result.output and "numpy, torch, noop" in result.output


def test_with_fl_off_a_trainer_that_is_not_installed_is_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch_trainer, "available", lambda: False)
    checked: list[str] = []
    monkeypatch.setattr(runner_cli, "trainer_named", lambda name: checked.append(name))
    result = CliRunner().invoke(
        runner_cli.app, ["--no-fl", "--fl-trainer", "torch", "--keystore", "/nonexistent/k.json"]
    )
    assert "--fl-trainer" not in result.output  # got past the option (then stops on the keystore)
    assert checked == []


def test_a_pytorch_that_is_installed_but_does_not_import_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed PyTorch that fails to import (here a shared library it cannot load) passed
    the start check, and then every round's training failed with the import's error."""
    broken = tmp_path / "site" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise OSError("libtorch_cpu.so: cannot open shared object file")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with pytest.raises(ValueError, match=r"PyTorch does not import: OSError: libtorch_cpu\.so"):
        executor.trainer_named("torch")
    result = CliRunner().invoke(
        runner_cli.app, ["--fl-trainer", "torch", "--keystore", str(tmp_path / "none.json")]
    )
    assert result.exit_code == 2, result.output
    assert "--fl-trainer" in result.output and "libtorch_cpu.so" in result.output
