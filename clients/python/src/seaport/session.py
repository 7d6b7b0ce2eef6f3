"""A session held by a thread of its own on the Heartbeat stream, across broken streams and servers.

The thread pings every third of the ttl. A path with no answer for half the
ttl is declared dead (a silent network drops packets without a reset, so
the stream itself would never fail): the thread leaves it for a new channel,
to the next address when there are several, and resumes the session there
while the server still holds it. A server that says it is stopping is left
at once for the next address. When the server no longer knows the session
(a restart, or its ttl passed) the thread opens a new one and re-registers
exactly this client's own registrations, with their ids, hosts and ports,
draining again those it had drained. An admin's free is final: that
registration is forgotten.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator, Optional

import grpc

from seaport.connection import RETRYABLE, Connection, Link, backoff
from seaport.events import EventHub
from seaport.model import ClientEvent, SeaportError
from seaport.v1 import seaport_pb2 as pb
from seaport.v1 import seaport_pb2_grpc as pb_grpc


class Ledger:
    """This client's own registrations, as they would be re-asserted under a new session, and which it drained."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, pb.RegisterRequest] = {}
        self._drained: set[str] = set()

    def remember(self, request: pb.RegisterRequest) -> None:
        with self._lock:
            self._requests[request.id] = request

    def forget(self, id: str) -> bool:
        """Stops re-asserting `id`; True if it was this client's."""
        with self._lock:
            self._drained.discard(id)
            return self._requests.pop(id, None) is not None

    def drained(self, id: str) -> None:
        """Registration `id` is draining: a re-assert drains it again."""
        with self._lock:
            if id in self._requests:
                self._drained.add(id)

    def is_drained(self, id: str) -> bool:
        with self._lock:
            return id in self._drained

    def set_metadata(self, id: str, metadata: dict[str, str]) -> None:
        with self._lock:
            if id in self._requests:
                self._requests[id].metadata.clear()
                self._requests[id].metadata.update(metadata)

    def requests(self) -> list[pb.RegisterRequest]:
        with self._lock:
            return [_copy(r) for r in self._requests.values()]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> list[str]:
        """Forgets everything (the session closed, freeing it all); the ids it held."""
        with self._lock:
            ids, self._requests, self._drained = list(self._requests), {}, set()
            return ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)


def _copy(request: pb.RegisterRequest) -> pb.RegisterRequest:
    again = pb.RegisterRequest()
    again.CopyFrom(request)
    return again


class _SessionLost(Exception):
    """The server no longer knows the session: open a new one and re-register."""


class _Refused(Exception):
    """The server refuses this client a session (no certificate, or not its session): retrying cannot help."""

    def __init__(self, error: SeaportError):
        super().__init__(str(error))
        self.error = error


class _DeadPath(Exception):
    """No answer within the patience given: the path is silent, and only a new channel helps."""


class _Stopping(Exception):
    """The server is shutting down: the session moves to the next address at once."""


class Session:
    """One session, from the write that opened it to its close."""

    def __init__(
        self,
        conn: Connection,
        ledger: Ledger,
        events: EventHub,
        *,
        ttl: float,
        connect_timeout: float,
        request_timeout: float,
        on_evicted: Callable[["Session"], None],
    ):
        self._conn, self._ledger, self._events = conn, ledger, events
        self._ask_ttl = ttl
        self._connect_timeout, self._request_timeout = connect_timeout, request_timeout
        self._on_evicted = on_evicted
        self.users = 0  # writes using it right now; guarded by the client's lock
        self.ending = threading.Event()  # set to close the session
        self._cond = threading.Condition()  # guards what follows; waited on for the stream to be up
        self._id = ""  # set when opened; kept while the stream is down, to resume
        self._ttl = 0.0  # granted, in seconds
        self._stub: Optional[pb_grpc.RegistryStub] = None  # set while the stream is up, for writes
        self._up = False  # the current stream opened or resumed the session
        self._fatal: Optional[SeaportError] = None
        self._done = False  # its thread has returned
        self._wake: Optional[threading.Event] = None  # wakes the current stream's pinger
        self._unasserted = False  # a new session still owes the re-registrations
        self._thread = threading.Thread(target=self._keep, name="seaport-session", daemon=True)
        self._thread.start()

    def live(self) -> tuple[pb_grpc.RegistryStub, str]:
        """Waits up to the request timeout for the stream to be up: the stub it is on and the session id."""
        with self._cond:
            self._cond.wait_for(self._settled, self._request_timeout)
            if self._fatal is not None:
                raise self._fatal
            if self._stub is None:
                if self.ending.is_set():
                    raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
                addresses = ", ".join(self._conn.addresses)
                message = f"no session at any of {addresses} within {self._request_timeout}s"
                raise SeaportError(grpc.StatusCode.UNAVAILABLE, message)
            return self._stub, self._id

    def _settled(self) -> bool:
        """The stream is up, or will not be. Holding _cond."""
        return self._stub is not None or self._done or self.ending.is_set()

    def end(self) -> None:
        """Closes the session (freeing its registrations) and stops its thread."""
        with self._cond:
            self.ending.set()
            if self._wake is not None:
                self._wake.set()
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _keep(self) -> None:
        """The thread: holds the session across broken streams until it ends."""
        failures = 0
        try:
            while not self.ending.is_set():
                try:
                    link = self._conn.current()
                except SeaportError:
                    return  # the client closed
                renew = stopping = False
                try:
                    self._hold(link)
                    return
                except _SessionLost:
                    for id in self._ledger.ids():
                        self._events.emit(ClientEvent("FREED", server=link.address, id=id, reason="expired"))
                    continue  # open a new session at once
                except _Refused as refused:
                    self._fatal = refused.error
                    return
                except _DeadPath as dead:
                    renew, reason = True, str(dead)
                except _Stopping:
                    stopping, reason = True, "the server is stopping"
                except grpc.RpcError as err:
                    reason = err.details() or err.code().name
                except (ConnectionError, ValueError) as err:
                    reason = str(err)
                finally:
                    with self._cond:
                        was_up, self._up, self._stub = self._up, False, None
                if self.ending.is_set():
                    return
                if was_up:
                    failures = 0  # a first failure
                    self._events.emit(ClientEvent("DISCONNECTED", server=link.address, reason=reason))
                self._conn.failed(link.generation, renew=renew)
                if stopping and len(self._conn.addresses) > 1:
                    continue  # at once: the next server is not the one stopping
                failures += 1
                # A session to resume is retried at least every third of its ttl.
                cap = min(5.0, self._ttl / 3) if self._id and self._ttl else 5.0
                self.ending.wait(backoff(failures, cap))
        finally:
            with self._cond:
                self._stub, self._done = None, True
                self._cond.notify_all()

    def _hold(self, link: Link) -> None:
        """Opens or resumes the session on one Heartbeat stream and holds it until it is closed.

        Raises _SessionLost when the server does not know the session, _Refused
        when it will not give this client one, _DeadPath when the path went
        silent, _Stopping when the server shuts down, and RpcError or
        ConnectionError when the stream breaks.
        """
        outgoing: "queue.Queue[Optional[pb.HeartbeatRequest]]" = queue.Queue()
        if self._id:
            outgoing.put(pb.HeartbeatRequest(resume=pb.ResumeSession(session_id=self._id)))
        else:
            opening = pb.OpenSession(ttl_ms=int(self._ask_ttl * 1000), client_name="seaport-python")
            outgoing.put(pb.HeartbeatRequest(open=opening))

        def requests() -> Iterator[pb.HeartbeatRequest]:
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        replies = link.stub.Heartbeat(requests())
        # A session to resume must be answered while the server still holds it.
        patience = min(self._connect_timeout, self._ttl / 2) if self._id and self._ttl else self._connect_timeout
        pinger = _Pinger(outgoing, replies, self.ending, patience)
        with self._cond:
            self._wake = pinger.wake
            if self.ending.is_set():
                pinger.wake.set()
        pinger.start()
        try:
            try:
                first = next(replies, None)
                if first is None:
                    raise ConnectionError("the server ended the session stream before opening it")
                opened = first.opened
                pinger.opened(opened.ttl_ms / 1000.0)
                if not opened.resumed:
                    self._unasserted = True
                self._id, self._ttl, self._up = opened.session_id, opened.ttl_ms / 1000.0, True
                kind = "RESUMED" if opened.resumed else "CONNECTED"
                self._events.emit(ClientEvent(kind, server=link.address))
                if self._unasserted:
                    self._reassert(link, opened.session_id)
                    self._unasserted = False
                with self._cond:
                    self._stub = link.stub
                    self._cond.notify_all()
                for reply in replies:
                    pinger.answered()
                    kind = reply.WhichOneof("kind")
                    if kind == "closed":
                        for id in self._ledger.clear():
                            self._events.emit(ClientEvent("FREED", server=link.address, id=id, reason="closed"))
                        return
                    if kind == "evicted":
                        self._evicted(link, reply.evicted)
                    if kind == "stopping":
                        raise _Stopping()
            except grpc.RpcError as err:
                if pinger.dead:
                    raise _DeadPath(pinger.dead) from None
                if err.code() == grpc.StatusCode.NOT_FOUND and self._id:
                    self._id = ""
                    raise _SessionLost() from err
                if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise _Refused(SeaportError.of(err)) from err
                raise
            raise ConnectionError("the server ended the session stream")
        finally:
            pinger.stop()
            outgoing.put(None)
            replies.cancel()

    def _reassert(self, link: Link, session_id: str) -> None:
        """Registers this client's own registrations again under the new session."""
        requests = self._ledger.requests()
        if not requests:
            return
        count = 0
        for request in requests:
            request.session_id = session_id
            # Bounded by half the ttl too: on a path gone silent the session
            # must still be resumed over another in time.
            timeout = min(self._request_timeout, max(self._ttl / 2, 1.0))
            try:
                link.stub.Register(request, timeout=timeout)
                if self._ledger.is_drained(request.id):
                    link.stub.Drain(pb.DrainRequest(session_id=session_id, id=request.id), timeout=timeout)
                count += 1
            except grpc.RpcError as err:
                if err.code() in RETRYABLE or err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise  # the server went: all of them go back on the next stream
                # Another client may hold the port now; the rest still go back.
                failed = ClientEvent("REASSERT_FAILED", server=link.address, id=request.id, reason=err.details() or "")
                self._events.emit(failed)
        self._events.emit(ClientEvent("REASSERTED", server=link.address, count=count))

    def _evicted(self, link: Link, evicted: pb.Evicted) -> None:
        """An admin freed one of this client's registrations: final, so it is forgotten, never re-registered."""
        if self._ledger.forget(evicted.id):
            self._events.emit(ClientEvent("EVICTED", server=link.address, id=evicted.id, by=evicted.by))
            self._events.emit(ClientEvent("FREED", server=link.address, id=evicted.id, reason="admin"))
        self._on_evicted(self)


class _Pinger:
    """Pings one Heartbeat stream every third of the ttl and cancels it when its path is dead.

    Until `opened`, it gives the server open_timeout to answer; after, half
    the ttl from the last answer. On `ending` it sends close, and gives the
    answer half the ttl too.
    """

    def __init__(self, outgoing: "queue.Queue[Optional[pb.HeartbeatRequest]]", replies: grpc.Future,
                 ending: threading.Event, open_timeout: float):
        self._outgoing, self._replies, self._ending = outgoing, replies, ending
        self._open_timeout = open_timeout
        self.wake = threading.Event()  # set on stop, on ending and when opened
        self._stopped = False
        self._ttl = 0.0
        self._last_answer = time.monotonic()
        self.dead = ""  # why the stream was cancelled, if it was

    def start(self) -> None:
        threading.Thread(target=self._run, name="seaport-ping", daemon=True).start()

    def opened(self, ttl: float) -> None:
        self._ttl, self._last_answer = max(ttl, 0.05), time.monotonic()
        self.wake.set()

    def answered(self) -> None:
        self._last_answer = time.monotonic()

    def stop(self) -> None:
        self._stopped = True
        self.wake.set()

    def _give_up(self, why: str) -> None:
        self.dead = why
        self._replies.cancel()

    def _run(self) -> None:
        self.wake.wait(self._open_timeout)
        self.wake.clear()
        if self._stopped:
            return
        if not self._ttl:
            if not self._ending.is_set():
                self._give_up(f"no answer to open or resume within {self._open_timeout:g}s")
                return
            self._ttl = self._open_timeout * 2  # closing before the session was opened
        interval, patience = self._ttl / 3, self._ttl / 2
        next_ping, seq, closing = time.monotonic() + interval, 0, 0.0
        while not self._stopped:
            now = time.monotonic()
            if self._ending.is_set() and not closing:
                self._outgoing.put(pb.HeartbeatRequest(close=pb.CloseSession()))
                closing = now + patience
            if closing and now >= closing:
                return self._give_up("no answer to close within half the session ttl")
            # Pings go every third of the ttl and a pong takes a round trip:
            # none for half the ttl is a dead path, declared while the
            # session can still be resumed over another.
            if not closing and now - self._last_answer > patience:
                return self._give_up("no answer to pings within half the session ttl")
            if not closing and now >= next_ping:
                seq += 1
                self._outgoing.put(pb.HeartbeatRequest(ping=pb.Ping(seq=seq)))
                next_ping = now + interval
            wake_at = closing or min(next_ping, self._last_answer + patience)
            self.wake.wait(max(0.0, wake_at - now) + 0.005)
            self.wake.clear()
