"""Timing, shared by the inference benchmark (run.py), its peaks and the training one (toolkit.train.benchmark):
calls timed until enough, warm-up, the best of a few calls, interleaved rounds, their statistics, progress."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import numpy as np

from toolkit.runtime.benchmark.records import Latency, PerImage, Throughput

DEFAULT_DURATION_S = 5.0  # timed seconds per backend x mode x batch size, spread over the rounds
DEFAULT_ROUNDS = 5


class Progress:
    """A live line on stderr when it is a terminal; one line per step otherwise; nothing when quiet."""

    def __init__(self, enabled: bool):
        self.enabled, self.start = enabled, time.perf_counter()
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    def live(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\rbenchmark: {text}  [{time.perf_counter() - self.start:.0f}s]\x1b[K")
            sys.stderr.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            self.close()
            print(f"benchmark: {text}  [{time.perf_counter() - self.start:.0f}s]", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def timed_calls(fn: Callable[[], None], enough: Callable[[int, float], bool]) -> list:
    """Seconds of each call of `fn`, called until enough(calls, seconds so far) (at least once)."""
    times: list = []
    while not times or not enough(len(times), sum(times)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def warm_up(fn: Callable[[], None], plan) -> tuple[float, int]:
    """Run `fn` until warm: plan.warmup calls, or ("auto") at least 3 and at least 0.5 s (at most 20). Returns
    (seconds of the first call, calls per block: plan.iterations over the rounds, or enough to fill
    plan.duration_s / rounds at the last call's speed). plan: a Settings or a TrainSettings."""
    w = plan.warmup
    times = timed_calls(fn, lambda n, s: n >= int(w) if w != "auto" else n >= 3 and (s >= 0.5 or n >= 20))
    if plan.iterations is not None:
        return times[0], max(1, math.ceil(int(plan.iterations) / plan.rounds))
    return times[0], max(1, int(round(float(plan.duration_s) / plan.rounds / max(times[-1], 1e-6))))


def time_best(fn: Callable[[], None], min_runs: int = 3, budget_s: float = 1.5, max_runs: int = 50) -> float:
    """The fastest of at least `min_runs` calls (and up to `budget_s` seconds), after one warm-up call."""
    fn()
    return min(timed_calls(fn, lambda n, s: n >= min_runs and (s >= budget_s or n >= max_runs)))


def interleaved_rounds(entries: dict, rounds: int, on_block: Optional[Callable] = None) -> tuple[dict, dict, list]:
    """Time `entries` {name: (fn, calls per block)} in `rounds` rounds; in round r the order starts at entry
    r mod n. Returns ({name: [seconds per call]}, {name: [seconds per block]}, [(round, name, calls)] in order)."""
    names = list(entries)
    lat, blocks, order = {name: [] for name in names}, {name: [] for name in names}, []
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            fn, k = entries[name]
            times = timed_calls(fn, lambda n, _: n >= k)
            order.append((r, name, k))
            lat[name] += times
            blocks[name].append(sum(times))
            if on_block:
                on_block(r, name, k, blocks[name][-1])
    return lat, blocks, order


def stats(lat: list, blocks: list, k: int, batch: int) -> tuple[Latency, PerImage, Throughput]:
    """Latency percentiles over every call (ms), the same per image, images/s over the rounds' blocks."""
    a = np.asarray(lat, dtype=np.float64) * 1e3
    q25, p50, q75, p90, p95, p99 = (round(float(v), 4) for v in np.percentile(a, [25, 50, 75, 90, 95, 99]))
    latency = Latency(p50, p90, p95, p99, round(float(a.mean()), 4), round(float(a.min()), 4),
                      round(float(a.max()), 4), q25, q75, round(q75 - q25, 4))
    per_image = PerImage(*(round(v / batch, 4) for v in (p50, p90, p95, p99)))
    ips = np.asarray([k * batch / b if b > 0 else float("inf") for b in blocks], dtype=np.float64)
    q = [round(float(v), 4) for v in (np.median(ips), ips.min(), ips.max(), *np.percentile(ips, [25, 75]))]
    return latency, per_image, Throughput(*q)
