"""The command line: --help for every subcommand and `info`."""
import subprocess
import sys

import pytest

from fastscore.ncsn.cli import build_parser, main

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fastscore " + command in capsys.readouterr().out


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "triton", "ext"):
        assert name in out
    assert "default (auto)" in out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fastscore", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastscore: no checkpoint at") and "Traceback" not in err
    assert main(["train", "--workdir", str(tmp_path / "run"), "--set", "model.ngff=3"]) == 2
    assert "unknown config key 'model.ngff'" in capsys.readouterr().err
