"""Every vbmount command and option explains itself; errors need no real stack."""

from __future__ import annotations

import click
from click.testing import CliRunner

from vbmount.cli import main


def test_every_command_and_option_has_help() -> None:
    assert main.help
    for name, command in main.commands.items():
        assert command.help, f"command {name} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output


def test_missing_backup_directory_is_a_usage_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["ls", str(tmp_path / "nope")], prog_name="vbmount")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_directory_without_data_files(tmp_path) -> None:
    result = CliRunner().invoke(main, ["ls", str(tmp_path)], prog_name="vbmount")
    assert (result.exit_code, result.output) == (
        4,
        f"vbmount: error: no backup data files (*.data) in {tmp_path}\n",
    )


def test_mount_needs_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for args in (["mount", str(tmp_path), str(tmp_path / "m")], ["umount", str(tmp_path)],
                 ["boot", str(tmp_path)], ["unboot", "x"]):  # fmt: skip
        result = CliRunner().invoke(main, args, prog_name="vbmount")
        assert result.exit_code == 10, result.output
        assert result.output == f"vbmount: error: vbmount {args[0]} must run as root\n"
