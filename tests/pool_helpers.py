"""Functions the demo pool's tests run in its worker processes (a spawned worker imports them by name:
tests/ is on the sys.path it inherits)."""
import gc
import weakref

_LEFT = []  # weak references to the cycles left behind in this worker


class _Node:
    pass


def leave_a_cycle() -> None:
    """Garbage that only a collection frees (automatic collection off, so only the pool's own one can)."""
    gc.disable()
    node = _Node()
    node.me = node
    _LEFT.append(weakref.ref(node))


def cycles_alive() -> int:
    return sum(ref() is not None for ref in _LEFT)


def pid() -> int:
    import os

    return os.getpid()
