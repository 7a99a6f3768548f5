"""Progress for long probe steps: a tqdm bar on stderr (count, elapsed, ETA) that appears as soon as a step
starts and that worker processes can advance too, so no probe method is silent for minutes.

    with progress.bar(total=86, desc="logreg C x fold", unit="fit") as bar:
        bar.update()                                  # in this process
        Parallel(n_jobs=2)(delayed(f)(..., bar.remote()) for ...)   # tick = bar.remote(); tick(1) in a worker

`bar(..., enabled=False)` gives the same object with nothing drawn, so callers never branch on it.
"""
from __future__ import annotations

import threading

MIN_INTERVAL = 0.5  # seconds between redraws: cheap even for thousands of small fits


class Tick:
    """A picklable callable that advances a `Bar` from another process: one short authenticated local
    connection per call (a few hundred microseconds, for steps that take far longer)."""

    def __init__(self, address, authkey: bytes):
        self._address, self._authkey = address, authkey

    def __call__(self, n: int = 1) -> None:
        from multiprocessing.connection import Client

        with Client(self._address, authkey=self._authkey) as conn:
            conn.send(n)


class Bar:
    """One tqdm bar; `remote()` opens, on first use, a local listener whose thread adds the ticks it receives.
    (A listener, not a multiprocessing manager: that would spawn a process that re-imports the caller's script.)"""

    def __init__(self, total: int, desc: str, unit: str = "fit", enabled: bool = True):
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=MIN_INTERVAL,
                         dynamic_ncols=True, smoothing=0.1)
        self._listener = self._thread = None
        self.count = 0  # ticks so far (tqdm's own count stays 0 when the bar is disabled)

    def update(self, n: int = 1) -> None:
        self.count += n
        self._bar.update(n)

    def remote(self) -> Tick:
        if self._listener is None:
            import os
            from multiprocessing.connection import Listener

            self._key = os.urandom(16)
            self._listener = Listener(family="AF_UNIX", authkey=self._key)
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()
        return Tick(self._listener.address, self._key)

    def _serve(self) -> None:
        """One connection at a time, in the order they were accepted: a close() sentinel comes last."""
        while True:
            with self._listener.accept() as conn:
                n = conn.recv()
            if n is None:
                return
            self.update(n)

    def close(self) -> None:
        if self._listener is not None:  # every worker's tick was accepted before this one connects
            Tick(self._listener.address, self._key)(None)
            self._thread.join()
            self._listener.close()
            self._listener = None
        self._bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int, desc: str, unit: str = "fit", enabled: bool = True) -> Bar:
    return Bar(total, desc, unit, enabled)


def quiet(total: int = 0, desc: str = "", unit: str = "fit") -> Bar:
    """A bar that draws nothing: the default where a caller passes no progress."""
    return Bar(total, desc, unit, enabled=False)
