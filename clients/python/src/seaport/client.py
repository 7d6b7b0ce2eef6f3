"""SeaportClient: reads on one connection, a session only while it registers.

Query, Get and Watch need no session: a reader holds nothing, and under mTLS
a reader without a certificate (which may not open a session) can still read.
The first register opens a session, held by a thread of its own (see
seaport.session); it ends with the last free, or with close().
"""

from __future__ import annotations

import socket
import threading
import time
import weakref
from typing import Callable, Mapping, Optional, Sequence, TypeVar

import grpc

from seaport.catalog import Catalog
from seaport.connection import RETRYABLE, Connection, backoff
from seaport.events import ClientEvents, EventHub
from seaport.model import ClientEvent, Registration, SeaportError, Service
from seaport.session import Ledger, Session
from seaport.v1 import seaport_pb2 as pb
from seaport.v1 import seaport_pb2_grpc as pb_grpc
from seaport.watch import WatchStream

T = TypeVar("T")

# How many assigned ports bind tries before giving up.
BIND_ATTEMPTS = 5


class SeaportClient:
    """A connection to Seaport; use as a context manager or call close().

    addresses are tried in order, and a client whose server fails moves on
    to the next. Query, get and watch open no session. The first register
    opens one; the last free, or close(), ends it. ttl is the session ttl to
    ask for, in seconds; 0 takes the server's --default-ttl. drain_wait > 0
    makes close() graceful: it drains this client's registrations and waits
    that many seconds before it frees them. The constructor raises
    SeaportError(UNAVAILABLE) when no address answers within connect_timeout.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        namespace: str = "",
        ttl: float = 0.0,
        ca: Optional[bytes] = None,
        cert: Optional[bytes] = None,
        key: Optional[bytes] = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        drain_wait: float = 0.0,
    ):
        if not addresses:
            raise ValueError("give at least one server address")
        credentials = grpc.ssl_channel_credentials(ca, key, cert) if ca or cert else None
        self._conn = Connection(addresses, credentials)
        self._namespace = namespace
        self._ttl = ttl
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._drain_wait = drain_wait
        self._closed = threading.Event()
        self._events = EventHub()
        self._ledger = Ledger()
        # Guards the session and the list of sessions still closing.
        self._lock = threading.Lock()
        self._session: Optional[Session] = None
        self._sessions: list[Session] = []
        self._watches: "weakref.WeakSet[WatchStream]" = weakref.WeakSet()
        if not self._conn.wait_ready(connect_timeout):
            self._conn.close()
            raise SeaportError(grpc.StatusCode.UNAVAILABLE, f"no Seaport server reachable at {', '.join(addresses)}")

    @property
    def server(self) -> str:
        """The address the client uses now."""
        return self._conn.address

    def events(self) -> ClientEvents:
        """Subscribes to what happens to the session and this client's registrations from now on (see ClientEvent)."""
        return self._events.subscribe()

    # -- the session ------------------------------------------------------------

    def _acquire(self) -> Session:
        """The session for a write, opened if there is none; give it back with _release."""
        with self._lock:
            if self._closed.is_set():
                raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
            session = self._session
            if session is None:
                session = self._session = Session(
                    self._conn, self._ledger, self._events, ttl=self._ttl,
                    connect_timeout=self._connect_timeout, request_timeout=self._request_timeout,
                    on_evicted=self._evicted,
                )
                self._sessions = [s for s in self._sessions if s.alive] + [session]
            session.users += 1
            return session

    def _release(self, session: Session) -> None:
        with self._lock:
            session.users -= 1
            self._end_if_idle(session)

    def _end_if_idle(self, session: Session) -> None:
        """Ends the session once it holds no registration and no write uses it. Holding _lock."""
        if session.users == 0 and not self._ledger and self._session is session:
            self._session = None
            session.end()

    def _evicted(self, session: Session) -> None:
        with self._lock:
            self._end_if_idle(session)

    def _write(self, call: Callable[[pb_grpc.RegistryStub, str], T]) -> T:
        """Runs call(stub, session_id) under the session, opening it if need be."""
        session = self._acquire()
        try:
            stub, session_id = session.live()
            try:
                return call(stub, session_id)
            except grpc.RpcError as err:
                raise SeaportError.of(err) from None
        finally:
            self._release(session)

    # -- writes: under the session ----------------------------------------------

    def register(
        self,
        role: str,
        *,
        port: int = 0,
        host: str = "",
        metadata: Optional[Mapping[str, str]] = None,
        id: str = "",
        namespace: Optional[str] = None,
    ) -> Registration:
        """Registers role (`name@1.2.3`); port 0 has the registry assign one, host "" is the address the server sees."""

        def call(stub: pb_grpc.RegistryStub, session_id: str) -> Registration:
            request = pb.RegisterRequest(
                session_id=session_id, role=role, namespace=self._namespace if namespace is None else namespace,
                host=host, port=port, id=id, metadata=dict(metadata or {}),
            )
            service = Service.of(stub.Register(request, timeout=self._request_timeout).service)
            request.id, request.host, request.port = service.id, service.host, service.port
            self._ledger.remember(request)
            return Registration(service.id, service.host, service.port, service)

        return self._write(call)

    def bind(
        self,
        role: str,
        *,
        port: int = 0,
        host: str = "",
        metadata: Optional[Mapping[str, str]] = None,
        id: str = "",
        namespace: Optional[str] = None,
        bind_ip: str = "0.0.0.0",
        backlog: int = 128,
    ) -> tuple[socket.socket, Registration]:
        """Registers role and returns a socket already listening on its port, with the registration.

        Listening at once leaves no gap for another process to take the port.
        A port someone holds outside the registry is freed and another one
        asked for, up to BIND_ATTEMPTS times (once when `port` is given).
        """
        family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
        tried: list[int] = []
        session = self._acquire()  # one session throughout, though a free may leave it empty for a while
        try:
            while True:
                reg = self.register(role, port=port, host=host, metadata=metadata, id=id, namespace=namespace)
                try:
                    return socket.create_server((bind_ip, reg.port), family=family, backlog=backlog), reg
                except OSError as err:
                    self.free(reg.id)
                    tried.append(reg.port)
                    if port or len(tried) == BIND_ATTEMPTS:
                        ports = ", ".join(map(str, tried))
                        raise OSError(
                            err.errno,
                            f"could not listen on {bind_ip} at the port(s) the registry gave {role} ({ports}): "
                            f"{err.strerror}; another process holds them outside the registry",
                        ) from err
        finally:
            self._release(session)

    def update(
        self,
        id: str,
        metadata: Optional[Mapping[str, str]] = None,
        merge: bool = False,
        remove_keys: Sequence[str] = (),
    ) -> Service:
        """Replaces a registration's metadata, or with merge=True merges into it and removes remove_keys."""
        if remove_keys and not merge:
            raise ValueError("remove_keys applies when merging: pass merge=True")

        def call(stub: pb_grpc.RegistryStub, session_id: str) -> Service:
            request = pb.UpdateRequest(
                session_id=session_id, id=id, metadata=dict(metadata or {}), merge=merge, remove_keys=list(remove_keys),
            )
            service = Service.of(stub.Update(request, timeout=self._request_timeout).service)
            self._ledger.set_metadata(id, dict(service.metadata))
            return service

        return self._write(call)

    def drain(self, id: str) -> Service:
        """Marks a registration draining: still registered, but get and catalog picks pass over it.

        Final until it is freed (draining again changes nothing); re-asserted
        under a new session, it is drained again.
        """

        def call(stub: pb_grpc.RegistryStub, session_id: str) -> Service:
            reply = stub.Drain(pb.DrainRequest(session_id=session_id, id=id), timeout=self._request_timeout)
            self._ledger.drained(id)
            return Service.of(reply.service)

        return self._write(call)

    def free(self, id: str) -> Service:
        """Frees a registration; freeing this client's last one ends its session."""

        def call(stub: pb_grpc.RegistryStub, session_id: str) -> Service:
            try:
                reply = stub.Free(pb.FreeRequest(session_id=session_id, id=id), timeout=self._request_timeout)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    self._ledger.forget(id)
                raise
            if self._ledger.forget(id):
                self._events.emit(ClientEvent("FREED", server=self._conn.address, id=id, reason="owner"))
            return Service.of(reply.service)

        return self._write(call)

    # -- reads: no session --------------------------------------------------------

    def query(self, pattern: str = "") -> list[Service]:
        """The services matching `name`, `name@range` or everything, now; asks the next address when one is down."""
        request = pb.QueryRequest(pattern=pattern, namespace=self._namespace)
        attempts = len(self._conn.addresses)
        for attempt in range(1, attempts + 1):
            link = self._conn.current()
            try:
                reply = link.stub.Query(request, timeout=self._request_timeout)
                return [Service.of(s) for s in reply.services]
            except grpc.RpcError as err:
                if not self._conn.failed_on(err, link.generation) or attempt == attempts:
                    raise SeaportError.of(err) from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def get(self, pattern: str, timeout: Optional[float] = None) -> list[Service]:
        """Waits until something matches, across reconnects; SeaportError(DEADLINE_EXCEEDED) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            link = self._conn.current()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise SeaportError(grpc.StatusCode.DEADLINE_EXCEEDED, f"nothing matched {pattern!r} within {timeout}s")
            wait_ms = 0 if left is None else max(1, int(left * 1000))
            request = pb.GetRequest(pattern=pattern, namespace=self._namespace, timeout_ms=wait_ms)
            try:
                reply = link.stub.Get(request, timeout=left)
                return [Service.of(s) for s in reply.services]
            except grpc.RpcError as err:
                self._conn.failed_on(err, link.generation)
                if err.code() not in RETRYABLE or self._closed.is_set():
                    raise SeaportError.of(err) from None
                failures += 1
                pause = backoff(failures)
                self._closed.wait(pause if left is None else min(pause, max(0.0, deadline - time.monotonic())))

    def watch(self, pattern: str = "", since_revision: int = 0) -> WatchStream:
        """The matching services (EXISTING), SYNCED, then every change; survives reconnects.

        since_revision > 0 replays the changes after that revision instead of
        a snapshot, when the server still has them (else RESET and a snapshot).
        """
        stream = WatchStream(self._conn, pattern, self._namespace, since_revision)
        self._watches.add(stream)
        if self._closed.is_set():
            stream.close()
        return stream

    def catalog(self, pattern: str = "") -> Catalog:
        """A local view of the services matching pattern, kept current by a watch; returns once it holds a snapshot."""
        return Catalog(self.watch(pattern), self._request_timeout)

    def close(self) -> None:
        """Ends the session, freeing its registrations, stops watches and closes the connection.

        With drain_wait set, it first drains every registration of this
        client and waits that long, so their users move elsewhere first.
        """
        if self._drain_wait > 0 and not self._closed.is_set() and self._ledger:
            for id in self._ledger.ids():
                try:
                    self.drain(id)
                except SeaportError:
                    pass  # it is freed with the rest all the same
            time.sleep(self._drain_wait)
        with self._lock:
            self._closed.set()
            self._session = None
            sessions = list(self._sessions)
        for stream in list(self._watches):
            stream.close()
        for session in sessions:
            session.end()
        deadline = time.monotonic() + 5
        for session in sessions:
            session.join(timeout=max(0.0, deadline - time.monotonic()))
        self._conn.close()
        self._events.end()

    def __enter__(self) -> "SeaportClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
