"""SIGTERM handling of the long-running commands (evaluate, train, bench), the one implementation."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Inside the block SIGTERM (preemption, a timeout's kill) raises ``SystemExit(128 + 15)``, so ``finally``
    clauses and context managers run (MLflow runs end KILLED, partial results stay consistent). The previous
    handler is restored on exit: commands called in-process (tests) leave no handler behind for later code,
    e.g. forked worker pools, whose workers must die on SIGTERM. Outside the main thread: no change."""

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
