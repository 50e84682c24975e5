"""Finding images: files, folders (image extensions only, hidden names skipped) and globs, in order and
without duplicates. Standard library and the extension list only, so the evaluation and OOD paths that list a
folder load no engine."""
from __future__ import annotations

import glob
import os
from typing import Iterable

from toolkit.preprocess import IMAGE_EXTENSIONS

__all__ = ["collect_images"]



def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: str, recursive: bool) -> list[str]:
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and _is_image_name(f))
    else:
        found = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                 if not f.startswith(".") and _is_image_name(f) and os.path.isfile(os.path.join(folder, f))]
    return found


def _expand_glob(pattern: str, recursive: bool) -> list[str]:
    found = []
    for m in sorted(glob.glob(pattern, recursive=True)):
        if os.path.isdir(m):
            found.extend(_walk(m, recursive))
        elif _is_image_name(m):   # glob skips hidden names itself
            found.append(m)
    return found


def _unique(paths: list[str]) -> list[str]:
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.realpath(p)   # a symlinked folder (a loop under a '**' glob too) lists a file once
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def collect_images(args: Iterable[str] | str, recursive: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (image extensions only, hidden skipped) and globs (expanded here, so quoted globs
    work) -> (image paths in order, without duplicates; [(arg, problem)] for args that matched nothing)."""
    if isinstance(args, (str, os.PathLike)):
        args = [args]
    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        arg = os.path.expanduser(os.fspath(arg))
        if os.path.isfile(arg):
            paths.append(arg)
        elif os.path.isdir(arg):
            found = _walk(arg, recursive)
            if not found:
                problems.append((arg, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
            paths.extend(found)
        elif glob.has_magic(arg):
            found = _expand_glob(arg, recursive)
            if not found:
                problems.append((arg, "pattern matched no images"))
            paths.extend(found)
        elif os.path.exists(arg):   # a FIFO, socket or device: decoding refuses it with what it is, unread
            paths.append(arg)
        else:
            problems.append((arg, "no such file or folder"))
    return _unique(paths), problems
