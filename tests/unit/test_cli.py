"""The one `vigil` parser: every command has a plain description and examples; registry
commands name the store and the models it holds when a name is wrong, and never create an
empty store in the current folder."""

from __future__ import annotations

import argparse

import pytest

from vigil.cli import build_parser, main
from vigil.cli_commands import HELP


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_command_has_a_description_and_examples(capsys):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(HELP), "a command without help text in vigil.cli_commands"
    for command, (description, examples) in HELP.items():
        text = " ".join(_help(capsys, command).split())
        assert " ".join(description.split()[:6]) in text, command
        assert "examples:" in text and examples.splitlines()[0].split()[0] in text
        assert "``" not in text, f"{command}: docstring markup in the help"
    top = _help(capsys)
    assert "examples:" in top and all(command in top for command in HELP)


def test_pull_outside_a_project_creates_no_store(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["pull", "--model", "vigil-capsules-image", "--dest", "deploy"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MLFLOW_TRACKING_URI" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "deploy").exists()
    assert main(["promote", "--model", "m", "--force", "1", "--reason", "r"]) == 1
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_model_name_lists_the_registered_ones_and_the_store(mlflow_store, capsys):
    from mlflow import MlflowClient

    MlflowClient(mlflow_store).create_registered_model("vigil-capsules-image")
    assert main(["pull", "--model", "vigil-capsule-image", "--dest", "deploy"]) == 1
    err = capsys.readouterr().err
    assert "no registered model 'vigil-capsule-image'" in err and mlflow_store in err
    assert "registered models: vigil-capsules-image" in err
    assert main(["promote", "--model", "capsules", "--force", "1", "--reason", "r"]) == 1
    out = capsys.readouterr().out
    assert "no registered model 'capsules'" in out and "vigil-capsules-image" in out
