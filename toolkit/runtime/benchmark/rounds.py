"""Timing: warm-up, then interleaved rounds, and the statistics over them; the progress line.

Shared by the inference benchmark (run.py) and the training one (toolkit.train.benchmark).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

DEFAULT_DURATION_S = 5.0  # timed seconds per backend x mode x batch size, spread over the rounds
DEFAULT_ROUNDS = 5


class _Progress:
    """A live line on stderr when it is a terminal; one line per round otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.start = time.perf_counter()

    def live(self, text: str) -> None:
        if self.tty:
            elapsed = time.perf_counter() - self.start
            sys.stderr.write(f"\rbenchmark: {text}  [{elapsed:.0f}s]\x1b[K")
            sys.stderr.flush()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        elapsed = time.perf_counter() - self.start
        print(f"benchmark: {text}  [{elapsed:.0f}s]", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def interleaved_rounds(entries: Sequence[tuple[str, Callable[[], None]]], rounds: int,
                       iterations: dict, on_block: Optional[Callable] = None) -> tuple[dict, dict, list]:
    """Time `entries` [(name, fn)] in `rounds` rounds; in round r the order starts at entry r mod n.

    iterations: {name: calls per block}. Returns ({name: [seconds per call]}, {name: [seconds per
    block]}, [the execution order as (round, name, calls)])."""
    n = len(entries)
    lat: dict[str, list] = {name: [] for name, _ in entries}
    blocks: dict[str, list] = {name: [] for name, _ in entries}
    order: list = []
    for r in range(rounds):
        shift = r % n if n else 0
        for name, fn in list(entries[shift:]) + list(entries[:shift]):
            k = int(iterations[name])
            order.append((r, name, k))
            total = 0.0
            for _ in range(k):
                t = time.perf_counter()
                fn()
                dt = time.perf_counter() - t
                lat[name].append(dt)
                total += dt
            blocks[name].append(total)
            if on_block:
                on_block(r, name, k, total)
    return lat, blocks, order


def _warm_up(fn: Callable[[], None], warmup: Optional[int]) -> tuple[float, float]:
    """Run `fn` until warm: `warmup` calls, or by default at least 2 and at least 0.5 s (at most 20).
    Returns (seconds of the first call, seconds of the last call)."""
    t = time.perf_counter()
    fn()
    first = last = time.perf_counter() - t
    calls, spent = 1, 0.0
    while (calls < int(warmup)) if warmup is not None else (calls < 3 or (spent < 0.5 and calls < 20)):
        t = time.perf_counter()
        fn()
        last = time.perf_counter() - t
        calls, spent = calls + 1, spent + last
    return first, last


def _stats(lat: list, blocks: list, k: int, batch: int) -> dict:
    a = np.asarray(lat, dtype=np.float64) * 1e3
    q25, p50, q75, p90, p95, p99 = (float(v) for v in np.percentile(a, [25, 50, 75, 90, 95, 99]))
    latency = {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "mean": float(a.mean()), "min": float(a.min()),
               "max": float(a.max()), "q25": q25, "q75": q75, "iqr": q75 - q25}
    ips = np.asarray([k * batch / b if b > 0 else float("inf") for b in blocks], dtype=np.float64)
    throughput = {"median": float(np.median(ips)), "min": float(ips.min()), "max": float(ips.max()),
                  "q25": float(np.percentile(ips, 25)), "q75": float(np.percentile(ips, 75))}
    per_image = {key: latency[key] / batch for key in ("p50", "p90", "p95", "p99")}
    rnd = lambda d: {key: round(v, 4) for key, v in d.items()}  # noqa: E731
    return {"latency_ms": rnd(latency), "latency_per_image_ms": rnd(per_image), "throughput_ips": rnd(throughput)}

