"""Preemption's settings reach the DataLoader workers (``preemption.ignore_stop_signals``)."""

import signal

from longred_pl import preemption


def test_workers_ignore_the_signals_the_run_is_configured_with(monkeypatch):
    monkeypatch.setattr(preemption, "_STOP_SIGNALS", preemption._STOP_SIGNALS)  # restored after
    before = signal.getsignal(signal.SIGHUP)
    try:
        preemption.Preemption(signals=["SIGHUP"]).setup(None, None, "fit")
        preemption.ignore_stop_signals(0)  # what a worker runs first
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
