"""A command's flags for fire, read from the options dataclasses it fills, and checked before fire runs.

    @options("toolkit.export.options:ExportOptions")
    def export(run, *, format="onnx", **given): ...

gives `toolkit export` a flag per ExportOptions field: its default is the field's and its --help line the
field's `# comment` (or the string under the field), so an option is written once, in its dataclass.
fire passes on only the flags given, so the dataclass's defaults apply. The dataclasses are imported when
their command is named, never at start-up. Standard library only.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import io
import math
import os
import re
import textwrap
import tokenize
import typing

from toolkit.errors import UserError
from toolkit.parsing import parse_bool, parse_int

FLAG = re.compile(r"--?[A-Za-z]")  # what fire reads as a flag: --name, and -n or -name (not -1)


def options(*sources: str, skip: tuple = ()):
    """Give a command the fields of these dataclasses ('module:Class') as keyword-only flags, less `skip`."""
    def attach(command):
        command._options = (sources, skip)  # underscored: fire's --help lists a function's public attributes
        return command
    return attach


def option_classes(command) -> list:
    """The command's options dataclasses, imported now."""
    return [getattr(importlib.import_module(module), name)
            for module, _, name in (source.partition(":") for source in getattr(command, "_options", ((),))[0])]


def signature(command) -> inspect.Signature:
    """The command's flags: its own parameters, then its options' fields, keyword-only, with their defaults;
    set on the function, with the fields' help under Args: in its docstring, for fire and --help."""
    if "__signature__" in vars(command) or not hasattr(command, "_options"):
        return inspect.signature(command, eval_str=True)
    skip = command._options[1]
    fields = {f.name: f for cls in option_classes(command) for f in _own_first(cls) if f.name not in skip}
    default = {k: f.default_factory() if f.default is dataclasses.MISSING else f.default for k, f in fields.items()}
    types = {k: v for cls in option_classes(command) for k, v in typing.get_type_hints(cls).items()}
    own = [p if p.name not in fields else p.replace(default=default[p.name], annotation=types[p.name])
           for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    added = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=default[k], annotation=types[k])
             for k, f in fields.items() if k not in {p.name for p in own}]
    helps = {k: v for cls in option_classes(command) for k, v in field_help(cls).items()}
    doc = inspect.cleandoc(command.__doc__ or "")
    command.__doc__ = doc + ("" if "Args:" in doc else "\n\nArgs:") + "".join(
        f"\n    {p.name}: {helps.get(p.name) or '-'}" for p in own + added if p.name in fields)
    command.__signature__ = inspect.Signature(own + added)
    return command.__signature__


def _own_first(cls) -> list:
    """The dataclass's fields, those it declares before those it inherits (its help reads that way)."""
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in vars(cls).get("__annotations__", {}))


def flag_names(command) -> tuple[list[str], set[str]]:
    """(the command's flag names, the true/false ones among them), spelled with underscores."""
    params = [p for p in signature(command).parameters.values() if p.kind is not p.VAR_POSITIONAL]
    switches = {p.name for p in params if isinstance(p.default, bool) or "bool" in str(p.annotation)}
    return [p.name for p in params], switches


def short_candidates(command, letter: str) -> list[str]:
    """The options (keyword-only flags) a one-letter flag `-x` can stand for: its long name when one.
    `-h` is always --help (serve-local's --host is written out)."""
    return [p.name for p in signature(command).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name.startswith(letter) and letter != "h"]


def field_help(cls) -> dict[str, str]:
    """{field: help} of a dataclass and its dataclass bases: the `# comment` after each field, with the
    indented comment-only lines right under it, or the string right under the field (an attribute docstring)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            found.update(_own_field_help(klass))
    return found


def _own_field_help(klass) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source shipped: flags without help lines, not a failing command
        return {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comments = {t.start[0]: t for t in tokens if t.type == tokenize.COMMENT}
    code = {t.start[0] for t in tokens if t.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING)}
    body = ast.parse(source).body[0].body
    found = {}
    for node, after in zip(body, body[1:] + [None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            found[node.target.id] = " ".join(after.value.value.split())
            continue
        row, text = node.end_lineno, []
        while row in comments and (row == node.end_lineno or row not in code and _goes_on(comments[row], node)):
            text.append(comments[row].string[1:].strip())
            row += 1
        found[node.target.id] = " ".join(t for t in text if t)
    return found


def _goes_on(comment, field) -> bool:
    """A comment-only line under a field's comment goes on with it when indented past the field or when its
    words are indented after the '#'; `# words` at the field's column is a heading for what follows."""
    return comment.start[1] > field.col_offset or comment.string[1:].startswith("  ")


def _switch_off(name: str, switches: set[str]) -> str | None:
    """'no_resume' or 'noresume' -> 'resume' when that is a true/false option (fire's --noflag, and --no-flag)."""
    for prefix in ("no_", "no"):
        if name.startswith(prefix) and name[len(prefix):] in switches:
            return name[len(prefix):]
    return None


def spell_out(commands: dict, argv: list[str]) -> list[str]:
    """`--resume` -> `--resume=True`, `--overwrite=false`, `--overwrite false` and `--no-overwrite` ->
    `--overwrite=False`: fire reads `--flag VALUE` as the flag's value (`train R --resume train.epochs=30`
    would swallow the override) and `--flag=false` as the string 'false', which is true. A switch takes the
    next word only when it is `true` or `false` (`predict M x.jpg --reject false`); any other word stays an
    argument. Spelled out, a written value means what it says."""
    if not argv or argv[0] not in commands:
        return argv
    switches = flag_names(commands[argv[0]])[1]
    out, rest = [argv[0]], list(argv[1:])
    while rest:
        arg = rest.pop(0)
        short = short_candidates(commands[argv[0]], arg[1]) if re.fullmatch(r"-[A-Za-z](=.*)?", arg) else []
        if len(short) == 1:
            arg = f"--{short[0]}{arg[2:]}"   # -o: fire's short flag
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if arg.startswith("--") and not eq and key not in switches and _switch_off(key, switches):
            arg = f"--{_switch_off(key, switches)}=False"
        elif arg.startswith("--") and key in switches:
            if not eq and rest and rest[0].lower() in ("true", "false"):
                eq, value = "=", rest.pop(0)
            arg = f"--{name}={parse_bool(value, f'--{name}') if eq else True}"
        elif arg.startswith("--") and eq and value.startswith("~"):
            arg = f"--{name}={os.path.expanduser(value)}"   # the shell expands `--out ~/x`, not `--out=~/x`
        out.append(arg)
    return out


def check(commands: dict, argv: list[str], program: str = "toolkit") -> None:
    """The command must exist and every flag must name one of its options, before anything runs: fire
    complains of an unknown --flag only after the command ran (`serve-local --max-concurency 2` served
    with the defaults), so a misspelling is caught here, with the nearest option, as the recipes do."""
    if not argv or argv[0].startswith("-"):
        return  # `toolkit`, `toolkit --help`: fire's own listing
    if argv[0] not in commands:
        near = difflib.get_close_matches(argv[0], list(commands), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"{argv[0]!r}: no such command; {hint}expected one of {', '.join(commands)}")
    names, switches = flag_names(commands[argv[0]])
    after = argv[argv.index("--") + 1:] if "--" in argv else []
    if words := [a for a in after if not a.startswith("-")]:   # not `--` as other programs read it
        raise UserError(f"{words[0]!r} after --: only fire's own flags follow a bare -- (--trace, --verbose); "
                        "expected it before the --, and a file whose name starts with a dash written as ./-name")
    for arg in argv[1:argv.index("--") if "--" in argv else None]:  # fire's own flags follow a bare --
        flag = arg.partition("=")[0]
        key = flag.lstrip("-").replace("-", "_")
        if not FLAG.match(arg) or key in names or key == "help" or _switch_off(key, switches):
            continue
        starts = short_candidates(commands[argv[0]], key)
        if len(key) == 1 and not flag.startswith("--"):  # fire's short flag: the one option with that initial
            if key == "h" or len(starts) == 1:
                continue
            if starts:
                spelled = ", ".join("--" + n.replace("_", "-") for n in starts)
                raise UserError(f"{flag}: ambiguous for {argv[0]} ({spelled}); write the option out")
        if os.path.exists(arg):   # a file whose name starts with a dash reads as a flag
            raise UserError(f"{arg}: read as an option; a file whose name starts with a dash is written ./{arg}")
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"did you mean --{near[0].replace('_', '-')}? " if near else ""
        raise UserError(f"{flag}: {argv[0]} has no such option; {hint}`{program} {argv[0]} --help` lists them")


def check_arguments(commands: dict, argv: list[str]) -> None:
    """Before the command runs (argv as spell_out leaves it): no more arguments than it takes, since fire
    runs a command with what it can use and only then fails on the rest (`evaluate M --json maybe` printed
    the whole report first); and a number flag's value is a number (`--batch-size abc` was a traceback
    from deep inside, `--threshold 1e999` infinity). Ranges stay each command's own check."""
    if not argv or argv[0] not in commands:
        return
    params = signature(commands[argv[0]]).parameters
    takes = [p.name for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    words, named, rest = [], set(), list(argv[1:argv.index("--") if "--" in argv else None])
    while rest:
        arg = rest.pop(0)
        if not FLAG.match(arg):
            words.append(arg)
            continue
        flag, eq, value = arg.partition("=")
        key = flag.lstrip("-").replace("-", "_")
        if key in named:   # fire keeps the last without a word (`--format json --format csv`)
            raise UserError(f"{flag}: given twice; expected each option once")
        named.add(key)
        if not eq and rest and (key in takes or not FLAG.match(rest[0])):
            value = rest.pop(0)   # the flag's value (switches were spelled out with '=')
        if key in params:
            _check_number(params[key].annotation, value, flag)
        if key in ("help", "h"):
            return   # fire's --help / -h: nothing runs
    required = [n for n in takes if params[n].default is params[n].empty and n not in named]
    if len(words) < len(required):   # fire's own "ERROR: ... no value for the required argument" and usage
        raise UserError(f"{argv[0]}: expected {' '.join(n.upper() for n in required)} "
                        f"(`toolkit {argv[0]} --help` lists the options)")
    if len(words) > len(takes) and not any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        wanted = " ".join(n.upper() for n in takes) or "no arguments"
        raise UserError(f"{argv[0]}: unexpected argument{'s' * (len(words) - len(takes) > 1)} "
                        f"{' '.join(repr(w) for w in words[len(takes):])}; expected {wanted} and --options "
                        f"(`toolkit {argv[0]} --help` lists them)")


def _check_number(annotation, value: str, flag: str) -> None:
    """An int flag's value is a whole number and a float flag's a finite number (None where optional)."""
    kinds = set(typing.get_args(annotation)) or {annotation}
    if not kinds & {int, float} or value == "" or (type(None) in kinds and value == "None"):
        return
    if int in kinds:
        parse_int(value, flag)
        return
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise UserError(f"{flag} {value!r}: expected a finite number")
