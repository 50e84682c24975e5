"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""
from __future__ import annotations

import contextlib
import os
import signal
import sys


class UserError(Exception):
    """Something the user can fix: a bad recipe key, a missing file, a corrupt image, a wrong model.

    The message names the thing and what was expected. It may span several lines when several
    problems are reported at once (one per line); it never carries a traceback.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), cut to `limit` characters:
    what a one-line user error quotes from a library's longer complaint."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class RankZeroError(UserError):
    """Under torchrun: rank 0's UserError, raised again on the other ranks so they stop too. Rank 0 has
    printed it; the CLI keeps the others quiet instead of repeating it once per process."""


class AbandonedWorkError(UserError):
    """A UserError raised while a thread still runs an engine's native code that cannot be interrupted (a
    serve-local warm-up past its deadline). The CLI ends the process with os._exit once it has printed
    the message: a normal interpreter shutdown would tear the engine down under that thread, and
    onnxruntime then aborts (SIGABRT) instead of exiting 2."""


# A torch-side command run on the edge install (no extras) fails on its first heavy import: these name the
# extra that brings the missing package, so the user gets one line to act on instead of a traceback.
EXTRA_OF_MODULE = {"torch": "train", "torchvision": "train", "albumentations": "train", "sklearn": "train",
                   "matplotlib": "train", "onnxscript": "train", "fastapi": "serve", "uvicorn": "serve",
                   "multipart": "serve", "timm": "lite", "openvino": "openvino", "tensorboard": "tb"}


def missing_extra(exc: ModuleNotFoundError) -> UserError | None:
    """The UserError for a missing package that one of toolkit's extras installs, else None."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return UserError(f"this command needs {top}, which is not installed; expected the [{extra}] extra: "
                     f"pip install 'toolkit[{extra}]'")


def exit_now(code: int) -> None:
    """Leave without interpreter shutdown (see AbandonedWorkError), output flushed first."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, `docker stop`) raised in the main thread, where sigterm_as_interrupt
    is on: every `with` and `finally` runs, as for Ctrl-C. The CLI exits with 128 + 15."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM as an exception while the block runs, so its temp files are removed as on Ctrl-C (Python's
    default for SIGTERM ends the process on the spot, leaving them)."""
    def raise_terminated(_signum, _frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:   # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

