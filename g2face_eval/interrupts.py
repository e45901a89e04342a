"""SIGTERM handling of the long-running commands (evaluate, train, bench), the one implementation."""

from __future__ import annotations

import contextlib
import signal
import sys
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


@contextlib.contextmanager
def say_how_to_resume(prog: str, hint: str) -> Iterator[None]:
    """Ctrl-C (KeyboardInterrupt) and SIGTERM (``sigterm_exits``' SystemExit 143) leaving the block print one line,
    ``<prog>: interrupted; <hint>`` / ``<prog>: terminated (SIGTERM); <hint>``, instead of a bare traceback, and
    propagate (the command maps KeyboardInterrupt to exit code 130)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {hint}", file=sys.stderr)
        raise
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            print(f"{prog}: terminated (SIGTERM); {hint}", file=sys.stderr)
        raise
