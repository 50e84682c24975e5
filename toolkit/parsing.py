"""Reading what a user typed: the one parser of true/false words, of whole numbers and of comma-separated lists.

fire hands `--flag=false` over as the string 'false' and `--sizes 1,8` as a tuple; recipes and Python
callers hand over bools, lists or strings. Standard library only: the CLI uses it before anything heavy.
"""
from __future__ import annotations

from typing import Callable

from toolkit.errors import UserError

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def parse_bool(value, name: str = "value") -> bool:
    """True / False from a bool (numpy's too) or a word (true/yes/1/on, false/no/0/off, any case)."""
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise UserError(f"{name} {value!r}: expected true or false")


def parse_int(value, name: str = "value") -> int:
    """A whole number from an int or its digits ('4', ' 4 '); a bool, a fraction or a word is a UserError."""
    if isinstance(value, bool):
        raise UserError(f"{name} {value!r}: expected a whole number")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"{name} {value!r}: expected a whole number") from None


def parse_list(value, kind: Callable = str, name: str = "value") -> list:
    """'1,8,32', (1, 8, 32), [1, 8] or 8 -> a list of `kind`, blanks dropped; None -> []."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple, set)) else str(value).split(",")
    items = [str(item).strip() for item in items if str(item).strip()]
    try:
        return [kind(item) for item in items]
    except (TypeError, ValueError):
        raise UserError(f"{name} {value!r}: expected a comma-separated list of {kind.__name__} values") from None
