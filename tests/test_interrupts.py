"""SIGTERM handling: commands raise SystemExit on SIGTERM only while they run and restore the previous handler
(an in-process CLI call used to leave its handler installed, so a later forked worker pool -- LFW validation --
inherited it and hung CI at ``Pool.terminate``); validation pool workers die on SIGTERM whatever the parent
installed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from g2face_eval.interrupts import sigterm_exits


def test_sigterm_raises_inside_and_previous_handler_is_restored():
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(SystemExit) as e, sigterm_exits():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode boundary
        assert e.value.code == 143
        assert signal.getsignal(signal.SIGTERM) is previous
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_evaluate_cli_leaves_no_handler_behind(tmp_path):
    from g2face_eval.harness import evaluate as E

    before = signal.getsignal(signal.SIGTERM)
    assert E.cli(["--config", str(tmp_path / "missing.toml")]) == 2  # exits early with a message
    assert signal.getsignal(signal.SIGTERM) is before


def test_validation_pool_workers_die_on_terminate_despite_parent_handler():
    from g2face_eval.oracles.validation import _worker_init

    old = signal.signal(signal.SIGTERM, lambda *a: None)  # a parent handler that would swallow SIGTERM
    try:
        pool = mp.get_context("fork").Pool(2, initializer=_worker_init, initargs=([], True))
        pool.apply(os.getpid)  # workers are up
        pool.map_async(time.sleep, [120, 120], chunksize=1)  # ... and busy when terminated
        time.sleep(1.0)
        done = threading.Event()

        def stop():
            pool.terminate()
            pool.join()
            done.set()

        threading.Thread(target=stop, daemon=True).start()
        assert done.wait(60), "pool workers ignored SIGTERM: Pool.terminate() hangs"
    finally:
        signal.signal(signal.SIGTERM, old)


def test_evaluate_cli_interrupted_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) during an evaluation: exit 130 and one line saying the batches are kept and how
    to resume, not a traceback; SIGTERM (SystemExit 143) keeps its code and says the same."""
    import pytest

    from g2face_eval.harness import evaluate as E

    monkeypatch.setenv("G2FACE_RESULTS_DIR", str(tmp_path / "r"))
    for exc, code in ((KeyboardInterrupt(), 130), (SystemExit(143), 143)):
        def stop(*a, _e=exc, **k):
            raise _e

        monkeypatch.setattr(E, "evaluate", stop)
        if code == 130:
            assert E.cli(["--methods", "blur_s4", "--no-progress"]) == 130
        else:
            with pytest.raises(SystemExit) as e:
                E.cli(["--methods", "blur_s4", "--no-progress"])
            assert e.value.code == 143
        err = capsys.readouterr().err
        assert "rerun the same command to resume" in err and "Traceback" not in err, err
