"""Stopping on a signal: finish the current batch, save, exit with 128 + the signal number."""
from __future__ import annotations

import signal
import sys


class StopRequest:
    """SIGINT/SIGTERM handler: finish the current batch, save, exit. A second Ctrl-C stops at once."""

    def __init__(self, announce: bool = True):
        self.signum = None
        self.announce = announce  # under torchrun only rank 0 says so
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name} received: finishing this batch, then saving", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
