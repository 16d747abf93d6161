"""SIGINT / SIGHUP during training, as Caffe's SignalHandler.

A signal only records a request; the training loop acts on it between
iterations (and between test batches), so a snapshot is never taken of
half-updated weights. Effects are "stop" (snapshot and stop), "snapshot"
(snapshot and continue) or "none". Defaults are Caffe's: SIGINT stops,
SIGHUP snapshots. A second SIGINT while a stop is pending raises
KeyboardInterrupt at once, for a user who does not want to wait.

Handlers are installed only for the duration of ``Solver.solve()`` (a
context manager) and the previous handlers are put back afterwards; outside
the main thread, where Python cannot install handlers, nothing is installed.
"""
from __future__ import annotations

import signal
import threading

EFFECTS = ("stop", "snapshot", "none")


class SignalActions:
    """``with SignalActions("stop", "snapshot") as actions: ... actions.requested()``."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot"):
        for effect in (sigint_effect, sighup_effect):
            if effect not in EFFECTS:
                raise ValueError(f"signal effect must be one of {EFFECTS}, got {effect!r}")
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self._pending: list[str] = []
        self._previous: dict = {}
        self._stopping = False

    def _handle(self, signum, frame) -> None:
        effect = self.effects.get(signum, "none")
        if signum == signal.SIGINT and self._stopping:
            raise KeyboardInterrupt
        if effect == "stop":
            self._stopping = True
        if effect != "none":
            self._pending.append(effect)

    def requested(self) -> str:
        """The oldest pending request ("stop", "snapshot"), or "none"."""
        return self._pending.pop(0) if self._pending else "none"

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.effects:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class NoSignals:
    """Stand-in when no handlers are installed (``Solver.step`` from Python)."""

    def requested(self) -> str:
        return "none"
