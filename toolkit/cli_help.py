"""`toolkit --help` and `toolkit COMMAND --help`, written from each command's signature and docstring (the
same flags toolkit/flags.py checks, spelled as the docs write them: `--batch-size`, and a one-letter form
only where it stands for one option). Standard library only: help never imports a command's libraries
beyond its options dataclasses."""
from __future__ import annotations

import inspect
import re
import shutil
import textwrap

from toolkit.flags import short_candidates, signature

_ARG = re.compile(r"^    (\w+): ?(.*)$")   # a line of the docstring's Args: section
_SENTENCE_END = re.compile(r"(?<=[a-z)])\. (?=[A-Z-])")   # not `IMAGES... (files`


def overview(program: str, commands: dict) -> str:
    """Every command with the first sentence of its docstring."""
    width = max(len(name) for name in commands) + 2
    lines = [f"usage: {program} COMMAND [ARGUMENTS] [--OPTIONS]   ({program} COMMAND --help: its options)", "",
             "commands:"]
    for name, command in commands.items():
        first = _SENTENCE_END.split(_summary(command))[0].rstrip(".")
        lines += _wrapped(f"  {name:<{width}}", first, indent=width + 2)
    return "\n".join(lines) + "\n"


def command_help(program: str, name: str, command) -> str:
    """Usage, what the command does, its arguments and its options with their defaults."""
    params = list(signature(command).parameters.values())
    helps = _arg_helps(command)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    options = [p for p in params if p.kind is p.KEYWORD_ONLY]
    usage = " ".join([f"usage: {program} {name}", *(_usage_word(p) for p in positional), "[--OPTIONS]"])
    lines = [usage, ""] + _wrapped("", _summary(command), indent=0) + ["", "options:"]
    for p in options:
        lines += _wrapped(f"  {_flag(command, p):<30}", _option_help(p, helps.get(p.name, "")), indent=32)
    return "\n".join(lines) + "\n"


def _summary(command) -> str:
    doc = inspect.cleandoc(command.__doc__ or "")
    return " ".join(doc.partition("\nArgs:")[0].split())


def _arg_helps(command) -> dict[str, str]:
    """{parameter: help} from the docstring's Args: section (a line per name, deeper lines go on with it)."""
    helps: dict[str, str] = {}
    name = None
    for line in inspect.cleandoc(command.__doc__ or "").partition("\nArgs:")[2].splitlines():
        if match := _ARG.match(line):
            name = match.group(1)
            helps[name] = match.group(2).strip()
        elif name and line.startswith("     "):
            helps[name] += " " + line.strip()
    return {k: "" if v == "-" else v for k, v in helps.items()}


def _usage_word(p: inspect.Parameter) -> str:
    word = p.name.upper()
    if p.kind is p.VAR_POSITIONAL:
        return f"[{word}...]"
    return word if p.default is p.empty else f"[{word}]"


def _is_switch(p: inspect.Parameter) -> bool:
    return isinstance(p.default, bool)


def _flag(command, p: inspect.Parameter) -> str:
    """`-o, --out-dir OUT_DIR`: the one-letter form only where it stands for this option alone."""
    long = "--" + p.name.replace("_", "-")
    short = f"-{p.name[0]}, " if short_candidates(command, p.name[0]) == [p.name] else ""
    if _is_switch(p):
        return f"{short}{long} / --no-{long[2:]}" if p.default else f"{short}{long}"
    return f"{short}{long} {_metavar(p)}"


def _metavar(p: inspect.Parameter) -> str:
    kinds = str(p.annotation)
    return "N" if "int" in kinds else "X" if "float" in kinds else p.name.upper()


def _option_help(p: inspect.Parameter, text: str) -> str:
    if _is_switch(p):
        return f"{text} (default: {'on' if p.default else 'off'})".strip()
    if p.default is None or p.default == "" or "default" in text.lower():
        return text
    shown = ",".join(map(str, p.default)) if isinstance(p.default, (list, tuple)) else p.default
    return f"{text} (default: {shown})".strip()


def _wrapped(head: str, text: str, indent: int) -> list[str]:
    """`head` then `text` filled to the terminal's width, going on under column `indent`."""
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    if len(head) > indent:   # a long flag: its help starts on the next line
        return [head.rstrip()] + _wrapped(" " * indent, text, indent)
    return textwrap.wrap(text, width=width, initial_indent=head, subsequent_indent=" " * indent) or [head.rstrip()]
