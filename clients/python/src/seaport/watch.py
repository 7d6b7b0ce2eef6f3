"""A watch that survives reconnects and failover, resuming from the last revision it saw."""

from __future__ import annotations

import threading
from typing import Iterator, Optional

import grpc

from seaport.connection import RETRYABLE, Connection, backoff
from seaport.model import SeaportError, WatchEvent
from seaport.v1 import seaport_pb2 as pb


class WatchStream:
    """The events of one watch: iterate it; close() stops it from any thread.

    After a dropped stream it watches again from the last revision seen, so
    nothing is missed or repeated. Revisions belong to one server, so after
    moving to another address it yields RESET and a fresh snapshot instead.
    It ends when closed, when the client closes, or with SeaportError when
    the server refuses it for good (a bad pattern, a missing certificate).
    """

    def __init__(self, conn: Connection, pattern: str, namespace: str, since_revision: int):
        self._conn = conn
        self._pattern, self._namespace = pattern, namespace
        self._since = since_revision
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: Optional[grpc.Future] = None
        self._events = self._follow()

    @property
    def revision(self) -> int:
        """The revision of the last change seen: watch(since_revision=...) carries on from it."""
        return self._since

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def close(self) -> None:
        with self._lock:
            self._stopped.set()
            call = self._call
        if call is not None:
            call.cancel()

    def _follow(self) -> Iterator[WatchEvent]:
        address: Optional[str] = None
        failures = 0
        told = False  # events were yielded that a fresh snapshot would repeat
        while not self._stopped.is_set():
            try:
                link = self._conn.current()
            except SeaportError:
                return  # the client closed
            if told and (link.address != address or not self._since):
                self._since, told = 0, False
                yield WatchEvent("RESET", None, 0)
            address = link.address
            request = pb.WatchRequest(pattern=self._pattern, namespace=self._namespace, since_revision=self._since)
            call = link.stub.Watch(request)
            with self._lock:
                self._call = call
                if self._stopped.is_set():
                    call.cancel()
            try:
                for e in call:
                    failures = 0
                    event = WatchEvent.of(e)
                    if event.kind not in ("EXISTING", "RESET"):
                        self._since = event.revision
                    told = True
                    yield event
            except grpc.RpcError as err:
                if self._stopped.is_set():
                    return
                if err.code() not in RETRYABLE:
                    raise SeaportError.of(err) from None
                self._conn.failed_on(err, link.generation)
            finally:
                call.cancel()
            failures += 1
            self._stopped.wait(backoff(failures))
