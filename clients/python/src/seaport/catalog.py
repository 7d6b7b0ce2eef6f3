"""A local, always-current view of the services matching a pattern, fed by a watch, so picks need no RPC."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Iterable, Optional

import grpc

from seaport.model import SeaportError, Service
from seaport.watch import WatchStream


class Catalog:
    """The services matching one pattern, kept current by a watch in a thread of its own.

    A snapshot (at start, or after RESET) is built aside and swapped in at
    SYNCED, so a pick never sees a half-built view. Use as a context manager
    or call close().
    """

    def __init__(self, watch: WatchStream, timeout: float):
        self._watch = watch
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._rebuilding: Optional[dict[str, Service]] = {}
        self._turn = itertools.count()
        self._ready = threading.Event()  # set at the first SYNCED, or when the watch ends before it
        self._synced = False
        self._error: Optional[SeaportError] = None
        threading.Thread(target=self._follow, name="seaport-catalog", daemon=True).start()
        if not self._ready.wait(timeout):
            watch.close()
            raise SeaportError(grpc.StatusCode.UNAVAILABLE, f"no snapshot of the catalog within {timeout}s")
        if self._error is not None:
            raise self._error
        if not self._synced:
            raise SeaportError(grpc.StatusCode.CANCELLED, "the client closed before the catalog's snapshot came")

    def _follow(self) -> None:
        try:
            for event in self._watch:
                self._apply(event.kind, event.service)
        except SeaportError as err:
            self._error = err
        finally:
            self._ready.set()

    def _apply(self, kind: str, service: Optional[Service]) -> None:
        with self._lock:
            if kind == "RESET":
                self._rebuilding = {}
            elif kind == "EXISTING" and service is not None:
                target = self._rebuilding if self._rebuilding is not None else self._services
                target[service.id] = service
            elif kind == "SYNCED":
                if self._rebuilding is not None:
                    self._services, self._rebuilding = self._rebuilding, None
                self._synced = True
                self._ready.set()
            elif kind in ("REGISTERED", "UPDATED") and service is not None:
                self._services[service.id] = service
            elif kind == "FREED" and service is not None:
                self._services.pop(service.id, None)

    def services(self) -> list[Service]:
        """Every matching service, draining ones too, ordered by id."""
        with self._lock:
            return [self._services[id] for id in sorted(self._services)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._services)

    def pick(self) -> Optional[Service]:
        """The next service, round robin; None when nothing matches. Picks never choose a draining one."""
        return self.pick_excluding(())

    def pick_random(self) -> Optional[Service]:
        """A service chosen at random; None when nothing matches."""
        candidates = [s for s in self.services() if not s.draining]
        return random.choice(candidates) if candidates else None

    def pick_excluding(self, exclude: Iterable[str]) -> Optional[Service]:
        """The next service round robin, skipping the ids in `exclude` (instances that just failed)."""
        skip = set(exclude)
        candidates = [s for s in self.services() if s.id not in skip and not s.draining]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    def close(self) -> None:
        """Stops following the watch; the view stays as it was."""
        self._watch.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
