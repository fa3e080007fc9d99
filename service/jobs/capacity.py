"""`ClusterCapacity`: the cluster's CPU count as last seen, refreshed by a thread of its own.

Request handlers and the scheduler read it and never wait on Ray: a Ray resource query that
hangs (it was seen hanging for 25 s) holds only the refreshing thread, not a lock that
`POST /jobs` or `POST /jobs/{id}/stop` need. A reader that comes before the first answer waits
for it at most `first_wait_s`, then goes on without it.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class ClusterCapacity:
    """Total logical CPUs of the cluster: `query()` run every `every_s` in a daemon thread."""

    def __init__(self, query: Callable[[], float], every_s: float = 5.0, first_wait_s: float = 2.0,
                 on_change: Callable[[], None] | None = None) -> None:
        self.query, self.every_s, self.first_wait_s = query, every_s, first_wait_s
        self.on_change = on_change
        """Called (from the refreshing thread) when the count changes, e.g. to rerun admission."""
        self._cpus: float | None = None
        self._known = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="cluster-capacity", daemon=True)
        self._thread.start()

    def __call__(self) -> float | None:
        """The CPU count last seen; None if Ray has not answered yet (waits `first_wait_s` for
        the first answer, never more)."""
        if self._cpus is None:
            self._known.wait(self.first_wait_s)
        return self._cpus

    @property
    def latest(self) -> float | None:
        """The CPU count last seen, or None; never waits."""
        return self._cpus

    def stop(self) -> None:
        """End the refreshing thread (it may be inside a hung query: it is a daemon)."""
        self._stop.set()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                cpus = float(self.query())
            except Exception as exc:  # noqa: BLE001 - Ray briefly unreachable: keep the last count
                log.warning("cluster CPU count unavailable: %s: %s", type(exc).__name__, exc)
            else:
                changed, self._cpus = cpus != self._cpus, cpus
                self._known.set()
                if changed and self.on_change is not None:
                    self.on_change()
            self._stop.wait(self.every_s)
