"""The command line: a misspelt flag or command is an error before anything runs, with the nearest name;
export, serve-local and benchmark take their flags, defaults and help from their options dataclasses."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from toolkit import cli, flags
from toolkit.errors import UserError
from toolkit.parsing import parse_bool, parse_int, parse_list


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
    (["serve-local", "-m", "3"], "-m: ambiguous for serve-local (--max-batch, --max-wait-ms"),
    (["trian", "r.yaml"], "'trian': no such command; did you mean 'train'?"),
    # more arguments than the command takes: fire ran it first, then failed on the rest
    (["evaluate", "m.onnx", "--json", "maybe"], "evaluate: unexpected argument 'maybe'; expected TARGET"),
    (["report", "a", "--split", "val", "b", "c"], "report: unexpected arguments 'b' 'c'; expected RUN"),
    (["train", "--resume"], "train: expected RECIPE"),   # was fire's ERROR line and a usage block
    (["predict", "m.onnx", "a.jpg", "--format", "json", "--format=csv"], "--format: given twice; expected each"),
    # a number flag's value is a number before anything runs (evaluate's was a ValueError traceback)
    (["evaluate", "m.onnx", "--batch-size", "abc"], "--batch-size 'abc': expected a whole number"),
    (["benchmark", "m.onnx", "--threads=2.5"], "--threads '2.5': expected a whole number"),
    (["predict", "m.onnx", "a.jpg", "--threshold", "1e999"], "--threshold '1e999': expected a finite number"),
    (["serve-local", "m.onnx", "--max-wait-ms", "nan"], "--max-wait-ms 'nan': expected a finite number"),
    # `--` hands what follows to fire: a path there was lost ("no images given") or met fire's own parser
    (["predict", "--", "m.onnx", "a.jpg"], "'m.onnx' after --: only fire's own flags follow a bare --"),
])
def test_unknown_flags_and_commands_stop_before_the_command_runs(argv, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing here to run on: any run would fail differently
    err = _refused(argv, capsys)
    assert expected in err
    assert "--help" in err or "no such command" in err or "ambiguous" in err or "expected " in err


def test_benchmark_batch_size_without_train_is_refused(capsys, monkeypatch, tmp_path):
    """`benchmark M --batch-size 4` timed the default sizes: --batch-size is --train's."""
    monkeypatch.chdir(tmp_path)
    assert "--batch-size 4 goes with --train RECIPE; for an export, --batch-sizes 4" in \
        _refused(["benchmark", "m.onnx", "--batch-size", "4"], capsys)


def test_every_set_reaches_the_recipe(monkeypatch):
    """A repeated --set kept only the last (fire), and --set split its value on spaces."""
    seen = {}
    import toolkit.train.loop as loop
    monkeypatch.setattr(loop, "train_command", lambda recipe, extra, **kw: seen.setdefault("extra", extra) and 0)
    cli.main(["train", "r.yaml", "--set", "train.epochs=3", "--set=data.root=/my photos", "train.lr=0.1"])
    assert seen["extra"] == ["train.epochs=3", "data.root=/my photos", "train.lr=0.1"]


def test_arguments_a_command_takes_pass():
    for argv in (["evaluate", "m.onnx", "--split", "val", "--json"], ["evaluate", "--target", "m.onnx", "--json=True"],
                 ["serve-local", "m.onnx", "--port", "8001"], ["report"], ["export", "r", "--", "--trace"],
                 ["predict", "m.onnx", "a.jpg", "b.jpg", "--top-k", "3"], ["train", "r.yaml", "train.epochs=3"]):
        flags.check_arguments(cli.COMMANDS, flags.spell_out(cli.COMMANDS, argv))


def _check(argv):
    flags.check(cli.COMMANDS, argv)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_real_option_passes_in_every_spelling(name):
    params = flags.signature(cli.COMMANDS[name]).parameters.values()
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            continue
        dashed = p.name.replace("_", "-")
        _check([name, f"--{p.name}", "1", f"--{dashed}=1", f"-{dashed}", "x"])
        if isinstance(p.default, bool):
            _check([name, f"--no{p.name}", f"--no-{dashed}"])
    _check([name, "--help"])
    _check([name, "--", "--trace", "--anything"])  # fire's own flags follow a bare --
    _check(["--help"])
    _check([])


def test_switches_are_spelled_out():
    assert flags.spell_out(cli.COMMANDS, ["train", "r.yaml", "--no-resume", "--nooverwrite", "--resume"]) == \
        ["train", "r.yaml", "--resume=False", "--overwrite=False", "--resume=True"]
    # a switch of an options dataclass too, Optional[bool] included: never takes the next word as its value
    assert flags.spell_out(cli.COMMANDS, ["export", "--per-channel=no", "--int8", "runs/x", "--no-int8-search"]) \
        == ["export", "--per-channel=False", "--int8=True", "runs/x", "--int8_search=False"]
    # `--flag true|false` as the docs write it (`predict M x.jpg --reject false` predicted a file 'false')
    assert flags.spell_out(cli.COMMANDS, ["predict", "m.onnx", "x.jpg", "--reject", "false", "--recursive", "TRUE",
                                          "y.jpg"]) == ["predict", "m.onnx", "x.jpg", "--reject=False",
                                                        "--recursive=True", "y.jpg"]
    assert flags.spell_out(cli.COMMANDS, ["evaluate", "m.onnx", "--json", "no"]) == \
        ["evaluate", "m.onnx", "--json=True", "no"]   # only true/false are taken: 'no' stays an argument
    # fire's short flags: -o and -r are train's --overwrite and --resume (the recipe is not an option), spelled
    # out so they never swallow the next override (`-o name=x` overwrote the recipe's run with name=x eaten)
    assert flags.spell_out(cli.COMMANDS, ["train", "r.yaml", "-o", "name=x", "-r=no"]) == \
        ["train", "r.yaml", "--overwrite=True", "name=x", "--resume=False"]
    # `--out=~/x`: the shell leaves that ~ alone (a literal folder '~' was made)
    assert flags.spell_out(cli.COMMANDS, ["export", "r", "--out=~/x/"]) == \
        ["export", "r", f"--out={os.path.expanduser('~/x/')}"]
    with pytest.raises(UserError, match="--resume 'maybe': expected true or false"):
        flags.spell_out(cli.COMMANDS, ["train", "r.yaml", "--resume=maybe"])


def test_short_flag_with_one_match_passes():
    """fire's -x: the one option whose name starts with x; two of them is an error naming both."""
    names = [n for n in flags.signature(cli.COMMANDS["serve-local"]).parameters]
    initials = [n[0] for n in names]
    unique = next(c for c in initials if initials.count(c) == 1 and c != "h")
    shared = next(c for c in initials if initials.count(c) > 1)
    _check(["serve-local", f"-{unique}", "1"])
    with pytest.raises(UserError, match=f"-{shared}: ambiguous for serve-local"):
        _check(["serve-local", f"-{shared}", "2"])


# command -> (its options dataclasses, the fields it spells otherwise or keeps for Python callers: export's --out
# is Triton's repo and the web folder, list_files is the web and Triton writers' own; benchmark's --model-only
# is end_to_end off)
OPTIONS = {"export": (["toolkit.export.options:ExportOptions", "toolkit.export.triton:TritonOptions",
                       "toolkit.export.web:WebOptions", "toolkit.export.tflite:TfliteOptions"],
                      {"repo", "folder", "list_files"}),
           "serve-local": (["toolkit.runtime.serve.options:ServeOptions"], set()),
           "benchmark": (["toolkit.runtime.benchmark.options:BenchmarkOptions",
                          "toolkit.export.bench_targets:TargetOptions"], {"end_to_end"})}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_flags_are_the_options_fields_with_their_defaults_and_help(name):
    """Each field of the command's options is a flag, its default the field's, its help the field's comment."""
    command = cli.COMMANDS[name]
    params = flags.signature(command).parameters
    classes = flags.option_classes(command)
    assert [f"{c.__module__}:{c.__name__}" for c in classes] == OPTIONS[name][0]
    for cls in classes:
        help_text = flags.field_help(cls)
        for field in dataclasses.fields(cls):
            if field.name in OPTIONS[name][1]:
                assert field.name not in params
                continue
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            assert params[field.name].default == default, (name, field.name)
            assert help_text[field.name] and f"{field.name}: {help_text[field.name]}" in command.__doc__


def test_field_help_reads_comments_continuations_docstrings_and_bases():
    @dataclasses.dataclass
    class Base:
        size: int = 3  # how big
        #              it grows (a comment-only line indented past the field goes on)

    @dataclasses.dataclass
    class Options(Base):
        name: str = "a"  # what it is called; a '#' in here stays
        # a heading above the next field, not part of `name`'s help
        hidden: bool = False
        count: int = 2
        """how many, said in a string"""

    assert flags.field_help(Options) == {"size": "how big it grows (a comment-only line indented past the field goes on)",
                                         "name": "what it is called; a '#' in here stays",
                                         "hidden": "", "count": "how many, said in a string"}


def test_one_parser_for_booleans_and_lists():
    assert [parse_bool(v) for v in (True, "yes", "ON", 1, "false", "No", 0, False)] == [True] * 4 + [False] * 4
    with pytest.raises(UserError, match="--fp16 'maybe': expected true or false"):
        parse_bool("maybe", "--fp16")
    assert parse_list("1, 8,,32", int) == parse_list((1, 8, 32), int) == [1, 8, 32]
    assert parse_list(None) == [] and parse_list(8, int) == [8] and parse_list("head") == ["head"]
    with pytest.raises(UserError, match="--batch-sizes 'a,1': expected a comma-separated list of int"):
        parse_list("a,1", int, "--batch-sizes")
    assert parse_int(4) == parse_int(" 4 ") == 4
    for bad in ("x", 2.5, True):
        with pytest.raises(UserError, match="--workers .*: expected a whole number"):
            parse_int(bad, "--workers")


def test_demo_number_flags_are_one_clear_error(capsys):
    assert "--workers 'x': expected a whole number" in _refused(["demo", "--imagenet", "--workers", "x"], capsys)
    assert "--steps 'many': expected a whole number" in _refused(["demo", "--distill", "--steps", "many"], capsys)


def test_serve_options_write_each_limit_default_once():
    from toolkit.runtime.serve.options import Limits, ServeOptions

    assert issubclass(ServeOptions, Limits) and ServeOptions().limits == Limits()
    params = flags.signature(cli.COMMANDS["serve-local"]).parameters
    assert params["max_batch"].default == Limits.max_batch and "model" == next(iter(params))


START_UP = """
import json, subprocess, sys
from toolkit import cli
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"numpy", "torch", "PIL", "onnxruntime", "fire"})))
"""


def test_start_up_imports_nothing_heavy_and_help_comes_from_the_options():
    """`import toolkit.cli` loads none of numpy, torch, Pillow, onnxruntime or fire (`toolkit --help` stays fast);
    `serve-local --help` shows the dataclass fields' comments."""
    env = {**os.environ, "PAGER": "cat", "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run([sys.executable, "-c", START_UP], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=120)
    assert loaded.returncode == 0 and json.loads(loaded.stdout) == [], loaded.stdout + loaded.stderr
    proc = subprocess.run([sys.executable, "-m", "toolkit", "serve-local", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown = " ".join((proc.stdout + proc.stderr).split())
    assert "--max-concurrency N predictions in flight before 503 busy (default: 64)" in shown
    assert "--max-batch N images per session call (one micro-batch) (default: 16)" in shown  # from Limits
    assert shown.startswith("usage: toolkit serve-local [MODEL] [--OPTIONS]")


def _help_flags(text: str) -> list[list[str]]:
    """The flag spellings of each option line of a --help text (`-o, --out-dir OUT_DIR` -> ['-o', '--out-dir'])."""
    return [re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", line.split("  ")[1])
            for line in text.split("options:")[1].splitlines() if line.startswith("  -")]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_shows_every_option_in_a_spelling_the_command_takes(name, capsys):
    """fire's --help listed `-r` for both report's --run and --recipe, and `--batch_size=BATCH_SIZE` where the
    docs write --batch-size: every spelling shown now passes the flag check, and a one-letter form is shown
    only where it stands for that option alone."""
    cli.main([name, "--help"])
    shown = _help_flags(capsys.readouterr().out)
    options = [p.name for p in flags.signature(cli.COMMANDS[name]).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert sorted(f[1 if f[0].count("-") == 1 else 0] for f in shown) == sorted(
        "--" + o.replace("_", "-") for o in options)
    for spellings in shown:
        _check([name, *spellings])
        short = [s for s in spellings if s.count("-") == 1]
        assert not short or flags.short_candidates(cli.COMMANDS[name], short[0][1]) == [spellings[1][2:].replace(
            "-", "_")]


def test_help_overview_and_dash_h(capsys):
    cli.main([])
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in cli.COMMANDS)
    cli.main(["serve-local", "-h"])   # -h is help, never serve-local's --host
    assert capsys.readouterr().out.startswith("usage: toolkit serve-local")
    cli.main(["report", "--help"])
    text = capsys.readouterr().out
    assert "  -r, --recipe" in text and "--run" not in text.split("options:")[1]  # RUN is the argument
    assert "usage: toolkit report [RUN] [--OPTIONS]" in text


def test_a_torch_side_command_without_torch_names_the_extra(tmp_path):
    """On the edge install (no torch), `toolkit report` / `train` fail on their first heavy import: one line
    naming the extra to install, exit 2, no traceback. torch is hidden from a fresh interpreter here."""
    code = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from toolkit import cli\n"
            "cli.main(sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", code, "report", str(tmp_path / "model.onnx")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("error: this command needs torch, which is not installed; expected the [train] "
                                  "extra: pip install 'toolkit[train]'"), res.stderr


def test_a_path_that_looks_like_a_number_prints_no_syntax_warning(tmp_path):
    """Fire tries every argument as a Python literal; a model named vgg16-224.int8.onnx made the compiler
    print a SyntaxWarning ("invalid decimal literal") above the command's own answer. Now only that answer
    (here: the file is missing, one line, exit 2) is printed."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.2x.jpg")
    res = subprocess.run([sys.executable, "-m", "toolkit", "predict", "exports/vgg16-224.int8.onnx", "photo.2x.jpg"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": ""})
    assert res.returncode == 2, res.stderr
    assert "SyntaxWarning" not in res.stderr and res.stderr.startswith("error: "), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_terminated_export_removes_its_temp_files(tmp_path, monkeypatch, capsys):
    """SIGTERM (timeout, kill, docker stop) ended an export on the spot, leaving 60-130 MB work folders:
    it now unwinds as Ctrl-C does, so every `with` removes its files, and the CLI exits 143."""
    import signal
    import tempfile

    import toolkit.export.formats as formats

    def export_killed_midway(*_args):
        with tempfile.TemporaryDirectory(prefix=".tmp-web-pid", dir=tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the export")

    monkeypatch.setattr(formats, "export_as", export_killed_midway)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "runs/x"])
    assert info.value.code == 128 + signal.SIGTERM and "terminated" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [] and signal.getsignal(signal.SIGTERM) is before


def test_a_file_named_like_a_flag_says_how_to_write_it(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-dash.onnx").write_bytes(b"x")
    assert "-dash.onnx: read as an option; a file whose name starts with a dash is written ./-dash.onnx" in \
        _refused(["predict", "-dash.onnx", "a.jpg"], capsys)
