"""The command line: a misspelt flag or command is an error before anything runs, with the nearest name."""
import inspect
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from toolkit import cli
from toolkit.errors import UserError


def _refused(argv, capsys) -> str:
    """Run the CLI in-process; it must exit 2 with one error line and print nothing on stdout."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["serve-local", "--max-concurency", "2"], "--max-concurency: serve-local has no such option; did you mean "
                                               "--max-concurrency?"),
    (["predict", "--formt", "json", "a.jpg"], "--formt: predict has no such option; did you mean --format?"),
    (["predict", "m.onnx", "a.jpg", "--formt=json"], "did you mean --format?"),
    (["train", "r.yaml", "--resme"], "did you mean --resume?"),
    (["train", "r.yaml", "--no-resme"], "--no-resme: train has no such option"),
    (["export", "--int-8"], "did you mean --int8?"),
    (["benchmark", "--batch_size=4", "--iterationz", "3"], "did you mean --iterations?"),
    (["demo", "--quik"], "did you mean --quick?"),
    (["evaluate", "-recipe-x", "r.yaml"], "-recipe-x: evaluate has no such option"),
    (["train", "r.yaml", "-z"], "-z: train has no such option"),
    (["serve-local", "-m", "3"], "-m: ambiguous for serve-local (--model, --max-batch"),
    (["trian", "r.yaml"], "'trian': no such command; did you mean 'train'?"),
])
def test_unknown_flags_and_commands_stop_before_the_command_runs(argv, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing here to run on: any run would fail differently
    err = _refused(argv, capsys)
    assert expected in err
    assert "--help" in err or "no such command" in err or "ambiguous" in err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_real_option_passes_in_every_spelling(name):
    params = inspect.signature(cli.COMMANDS[name]).parameters.values()
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            continue
        dashed = p.name.replace("_", "-")
        cli._check_flags([name, f"--{p.name}", "1", f"--{dashed}=1", f"-{dashed}", "x"])
        if isinstance(p.default, bool):
            cli._check_flags([name, f"--no{p.name}", f"--no-{dashed}"])
    cli._check_flags([name, "--help"])
    cli._check_flags([name, "--", "--trace", "--anything"])  # fire's own flags follow a bare --
    cli._check_flags(["--help"])
    cli._check_flags([])


def test_switches_are_spelled_out():
    assert cli._spell_out_flags(["train", "r.yaml", "--no-resume", "--nooverwrite", "--resume"]) == \
        ["train", "r.yaml", "--resume=False", "--overwrite=False", "--resume=True"]
    with pytest.raises(UserError, match="--resume=maybe: expected --resume alone"):
        cli._spell_out_flags(["train", "r.yaml", "--resume=maybe"])


def test_short_flag_with_one_match_passes():
    """fire's -x: the one option whose name starts with x; two of them is an error naming both."""
    names = [n for n in inspect.signature(cli.COMMANDS["serve-local"]).parameters]
    initials = [n[0] for n in names]
    unique = next(c for c in initials if initials.count(c) == 1 and c != "h")
    shared = next(c for c in initials if initials.count(c) > 1)
    cli._check_flags(["serve-local", f"-{unique}", "1"])
    with pytest.raises(UserError, match=f"-{shared}: ambiguous for serve-local"):
        cli._check_flags(["serve-local", f"-{shared}", "2"])


def test_help_still_works():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "serve-local", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PAGER": "cat"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "max_concurrency" in proc.stdout + proc.stderr
