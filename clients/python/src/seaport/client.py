"""SeaportClient: reads on one connection, a session only while it registers.

Query, Get and Watch need no session: a reader holds nothing, and under mTLS
a reader without a certificate (which may not open a session) can still read.
The first register opens a session, held by a background thread on the
Heartbeat stream; it ends with the last free, or with close(). When the
stream drops the thread reconnects, to the next address when several were
given, with exponential backoff and full jitter, and resumes the session, so
nothing is freed and watchers see nothing. Only when the server no longer
knows the session (a restart, or its ttl passed) does it open a new one and
re-register exactly this client's own registrations with their ids, hosts
and ports. An admin's free (`evicted`) is final: the registration is
forgotten and never registered again.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional, Sequence

import grpc

from seaport.v1 import seaport_pb2 as pb
from seaport.v1 import seaport_pb2_grpc as pb_grpc


class SeaportError(Exception):
    """A refused call: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{message} ({code.name})")
        self.code = code
        self.message = message

    @classmethod
    def of(cls, err: grpc.RpcError) -> "SeaportError":
        return cls(err.code(), err.details() or "")


@dataclass(frozen=True)
class Service:
    """One registration."""

    id: str
    name: str
    version: str
    host: str
    port: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    namespace: str = ""
    owner: str = ""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def role(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @classmethod
    def of(cls, s: pb.Service) -> "Service":
        return cls(s.id, s.name, s.version, s.host, s.port, dict(s.metadata), s.namespace, s.owner)


@dataclass(frozen=True)
class Registration:
    """A registration of this client's: its id, host, port and full record."""

    id: str
    host: str
    port: int
    service: Service


@dataclass(frozen=True)
class WatchEvent:
    """One watch event: kind is EXISTING, SYNCED, REGISTERED, UPDATED, FREED or RESET."""

    kind: str
    service: Optional[Service]
    revision: int


class _SessionLost(Exception):
    """The server no longer knows the session: open a new one and re-register."""


class _Refused(Exception):
    """The server refuses this client a session (no certificate, or not its session): retrying cannot help."""

    def __init__(self, error: SeaportError):
        super().__init__(str(error))
        self.error = error


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)

# gRPC's own reconnect backoff grows to two minutes; bounded like the
# session's, a channel comes back soon enough to resume a session in its ttl.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def _backoff(failures: int, cap: float = 5.0) -> float:
    """Full jitter: a random wait below a bound that doubles with each failure, so clients do not return in step."""
    return random.uniform(0, min(cap, 0.1 * 2 ** min(failures, 10)))


class _Connection:
    """The channel to one of the servers, shared by reads, writes and the session.

    A call that finds its server unavailable moves everyone on to the next
    address. With a single address the channel is kept: gRPC reconnects it.
    """

    def __init__(self, addresses: Sequence[str], credentials: Optional[grpc.ChannelCredentials]):
        self.addresses = list(addresses)
        self._credentials = credentials
        self._lock = threading.Lock()
        self._index = 0
        self._channel: Optional[grpc.Channel] = None
        self._stub: Optional[pb_grpc.RegistryStub] = None
        self._generation = 0
        self._closed = False

    def current(self) -> tuple[grpc.Channel, pb_grpc.RegistryStub, int]:
        """The channel, its stub, and the generation to report a failure of."""
        with self._lock:
            if self._closed:
                raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
            if self._channel is None or self._stub is None:
                address = self.addresses[self._index]
                if self._credentials is not None:
                    self._channel = grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
                else:
                    self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
                self._stub = pb_grpc.RegistryStub(self._channel)
            return self._channel, self._stub, self._generation

    def failed(self, generation: int) -> None:
        """The server of `generation` failed: move on to the next address, unless someone already has."""
        with self._lock:
            if generation != self._generation or len(self.addresses) == 1 or self._channel is None:
                return
            # Closing cancels the calls still on it; their callers retry on the next server.
            self._channel.close()
            self._channel, self._stub = None, None
            self._index = (self._index + 1) % len(self.addresses)
            self._generation += 1

    def failed_on(self, err: grpc.RpcError, generation: int) -> None:
        """Moves on when err says the server is unavailable."""
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            self.failed(generation)

    def wait_ready(self, timeout: float) -> bool:
        """Connects to the first address that answers within timeout seconds; False when none does."""
        deadline = time.monotonic() + timeout
        failures = 0
        while True:
            channel, _, generation = self.current()
            states: "queue.Queue[grpc.ChannelConnectivity]" = queue.Queue()
            notify = states.put
            channel.subscribe(notify, try_to_connect=True)
            try:
                while True:
                    try:
                        state = states.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        return False
                    if state == grpc.ChannelConnectivity.READY:
                        return True
                    if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE and len(self.addresses) > 1:
                        break
            finally:
                channel.unsubscribe(notify)
            self.failed(generation)
            failures += 1
            time.sleep(min(max(0.0, deadline - time.monotonic()), _backoff(failures)))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub = None, None


class _Session:
    """One session, from the write that opened it to its close; a thread of its own holds it."""

    def __init__(self) -> None:
        self.id = ""  # set when opened; kept while the stream is down, to resume
        self.ttl = 0.0  # granted, in seconds
        self.stub: Optional[pb_grpc.RegistryStub] = None  # set while the stream is up
        self.fatal: Optional[SeaportError] = None
        self.done = False  # its thread has returned
        self.users = 0  # writes using it right now
        self.ending = threading.Event()  # set to close the session
        self.thread: Optional[threading.Thread] = None


class SeaportClient:
    """A connection to Seaport; use as a context manager or call close().

    Query, get and watch open no session. The first register opens one; the
    last free, or close(), ends it. ttl is the session ttl to ask for, in
    seconds; 0 takes the server's --default-ttl. The constructor raises
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
    ):
        if not addresses:
            raise ValueError("give at least one server address")
        credentials = grpc.ssl_channel_credentials(ca, key, cert) if ca or cert else None
        self._conn = _Connection(addresses, credentials)
        self._namespace = namespace
        self._ttl = ttl
        self._request_timeout = request_timeout
        self._closed = threading.Event()
        # Guards the session, the registrations and the session threads; waited on for a session to come up.
        self._cond = threading.Condition()
        self._session: Optional[_Session] = None
        self._owned: dict[str, pb.RegisterRequest] = {}
        self._threads: list[threading.Thread] = []
        if not self._conn.wait_ready(connect_timeout):
            self._conn.close()
            raise SeaportError(grpc.StatusCode.UNAVAILABLE, self._unreachable())

    def _unreachable(self) -> str:
        return f"no Seaport server reachable at {', '.join(self._conn.addresses)}"

    # -- the session ------------------------------------------------------------

    def _acquire(self) -> _Session:
        """The session for a write, opened if there is none; give it back with _release."""
        with self._cond:
            if self._closed.is_set():
                raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
            session = self._session
            if session is None:
                session = self._session = _Session()
                session.thread = threading.Thread(target=self._keep, args=(session,), name="seaport-session", daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [session.thread]
                session.thread.start()
            session.users += 1
            return session

    def _release(self, session: _Session) -> None:
        with self._cond:
            session.users -= 1
            self._end_if_idle(session)

    def _end_if_idle(self, session: _Session) -> None:
        """Ends the session once it holds no registration and no write uses it. Holding _cond."""
        if session.users == 0 and not self._owned and self._session is session:
            self._session = None
            session.ending.set()

    def _live(self, session: _Session) -> tuple[pb_grpc.RegistryStub, str]:
        """Waits for the session's stream to be up; the stub it is on and the session id."""
        with self._cond:
            self._cond.wait_for(
                lambda: session.stub is not None or session.done or self._closed.is_set(), self._request_timeout
            )
            if session.fatal is not None:
                raise session.fatal
            if self._closed.is_set():
                raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
            if session.stub is None:
                raise SeaportError(grpc.StatusCode.UNAVAILABLE, self._unreachable())
            return session.stub, session.id

    def _keep(self, session: _Session) -> None:
        """The session's thread: holds it across dropped streams, resuming it, until it ends."""
        failures = 0
        try:
            while not (session.ending.is_set() or self._closed.is_set()):
                try:
                    _, stub, generation = self._conn.current()
                except SeaportError:
                    return  # the client closed
                try:
                    self._hold(session, stub)
                    return
                except _SessionLost:
                    continue  # open a new session at once
                except _Refused as refused:
                    session.fatal = refused.error
                    return
                except Exception:  # a broken connection or stream: back off, then the next server
                    pass
                finally:
                    with self._cond:
                        if session.stub is not None:
                            failures = 0  # it was up: this is a first failure
                        session.stub = None
                self._conn.failed(generation)
                failures += 1
                # A session to resume is retried at least every third of its ttl.
                cap = min(5.0, session.ttl / 3) if session.id and session.ttl else 5.0
                session.ending.wait(_backoff(failures, cap))
        finally:
            with self._cond:
                session.stub, session.done = None, True
                if self._session is session:
                    self._session = None
                self._cond.notify_all()

    def _hold(self, session: _Session, stub: pb_grpc.RegistryStub) -> None:
        """Opens or resumes the session on one Heartbeat stream and holds it until it is closed.

        Raises _SessionLost when the server does not know the session, _Refused
        when it will not give this client one, and anything else when the stream breaks.
        """
        outgoing: "queue.Queue[Optional[pb.HeartbeatRequest]]" = queue.Queue()
        if session.id:
            outgoing.put(pb.HeartbeatRequest(resume=pb.ResumeSession(session_id=session.id)))
        else:
            outgoing.put(pb.HeartbeatRequest(open=pb.OpenSession(ttl_ms=int(self._ttl * 1000), client_name="seaport-python")))

        def requests() -> Iterator[pb.HeartbeatRequest]:
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        replies = stub.Heartbeat(requests())
        stopped = threading.Event()
        try:
            try:
                first = next(replies, None)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND and session.id:
                    session.id = ""
                    raise _SessionLost() from err
                if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise _Refused(SeaportError.of(err)) from err
                raise
            if first is None:
                raise ConnectionError("the server ended the session stream before opening it")
            opened = first.opened
            if not opened.resumed:
                self._reassert(stub, opened.session_id)
            with self._cond:
                session.id, session.ttl, session.stub = opened.session_id, opened.ttl_ms / 1000.0, stub
                self._cond.notify_all()

            interval = max(opened.ttl_ms / 3000.0, 0.05)

            def ping() -> None:
                for seq in itertools.count(1):
                    if session.ending.wait(interval):
                        outgoing.put(pb.HeartbeatRequest(close=pb.CloseSession()))
                        return
                    if stopped.is_set():
                        return
                    outgoing.put(pb.HeartbeatRequest(ping=pb.Ping(seq=seq)))

            threading.Thread(target=ping, name="seaport-ping", daemon=True).start()
            try:
                for reply in replies:
                    kind = reply.WhichOneof("kind")
                    if kind == "closed":
                        return
                    if kind == "evicted":
                        self._evicted(session, reply.evicted.id)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    session.id = ""
                    raise _SessionLost() from err
                raise
            raise ConnectionError("the server ended the session stream")
        finally:
            stopped.set()
            outgoing.put(None)
            replies.cancel()

    def _reassert(self, stub: pb_grpc.RegistryStub, session_id: str) -> None:
        with self._cond:
            requests = list(self._owned.values())
        for request in requests:
            again = pb.RegisterRequest()
            again.CopyFrom(request)
            again.session_id = session_id
            try:
                stub.Register(again, timeout=self._request_timeout)
            except grpc.RpcError:
                pass  # another client may hold the port now; the rest still go back

    def _evicted(self, session: _Session, id: str) -> None:
        """An admin freed one of this client's registrations: final, so it is forgotten, never re-registered."""
        with self._cond:
            self._owned.pop(id, None)
            self._end_if_idle(session)

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
        """Registers role (`name@1.2.3`); port 0 has the registry assign one. Opens the session if none is open."""
        session = self._acquire()
        try:
            stub, session_id = self._live(session)
            request = pb.RegisterRequest(
                session_id=session_id, role=role, namespace=self._namespace if namespace is None else namespace,
                host=host, port=port, id=id, metadata=dict(metadata or {}),
            )
            try:
                service = Service.of(stub.Register(request, timeout=self._request_timeout).service)
            except grpc.RpcError as err:
                raise SeaportError.of(err) from None
            request.id, request.host, request.port = service.id, service.host, service.port
            with self._cond:
                self._owned[service.id] = request
            return Registration(service.id, service.host, service.port, service)
        finally:
            self._release(session)

    def update(self, id: str, metadata: Mapping[str, str], merge: bool = False) -> Service:
        """Replaces (or merges into) a registration's metadata."""
        session = self._acquire()
        try:
            stub, session_id = self._live(session)
            try:
                reply = stub.Update(
                    pb.UpdateRequest(session_id=session_id, id=id, metadata=dict(metadata), merge=merge),
                    timeout=self._request_timeout,
                )
            except grpc.RpcError as err:
                raise SeaportError.of(err) from None
            service = Service.of(reply.service)
            with self._cond:
                if id in self._owned:
                    self._owned[id].metadata.clear()
                    self._owned[id].metadata.update(service.metadata)
            return service
        finally:
            self._release(session)

    def free(self, id: str) -> Service:
        """Frees a registration; freeing this client's last one ends its session."""
        session = self._acquire()
        try:
            stub, session_id = self._live(session)
            try:
                reply = stub.Free(pb.FreeRequest(session_id=session_id, id=id), timeout=self._request_timeout)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    with self._cond:
                        self._owned.pop(id, None)
                raise SeaportError.of(err) from None
            with self._cond:
                self._owned.pop(id, None)
            return Service.of(reply.service)
        finally:
            self._release(session)

    # -- reads: no session --------------------------------------------------------

    def query(self, pattern: str = "") -> list[Service]:
        """The services matching `name`, `name@range` or everything, now."""
        _, stub, generation = self._conn.current()
        try:
            reply = stub.Query(pb.QueryRequest(pattern=pattern, namespace=self._namespace), timeout=self._request_timeout)
        except grpc.RpcError as err:
            self._conn.failed_on(err, generation)
            raise SeaportError.of(err) from None
        return [Service.of(s) for s in reply.services]

    def get(self, pattern: str, timeout: Optional[float] = None) -> list[Service]:
        """Waits until something matches, across reconnects; raises SeaportError(DEADLINE_EXCEEDED) after `timeout` seconds."""
        failures = 0
        while True:
            _, stub, generation = self._conn.current()
            try:
                reply = stub.Get(pb.GetRequest(pattern=pattern, namespace=self._namespace), timeout=timeout)
                return [Service.of(s) for s in reply.services]
            except grpc.RpcError as err:
                self._conn.failed_on(err, generation)
                if err.code() in _RETRYABLE and timeout is None and not self._closed.is_set():
                    failures += 1
                    self._closed.wait(_backoff(failures))
                    continue
                raise SeaportError.of(err) from None

    def watch(self, pattern: str = "") -> Iterator[WatchEvent]:
        """The matching services (EXISTING), SYNCED, then every change; survives reconnects."""
        since, failures = 0, 0
        while not self._closed.is_set():
            try:
                _, stub, generation = self._conn.current()
            except SeaportError:
                return  # the client closed
            call = stub.Watch(pb.WatchRequest(pattern=pattern, namespace=self._namespace, since_revision=since))
            try:
                for e in call:
                    failures = 0
                    kind = pb.WatchEvent.Kind.Name(e.kind)
                    if kind not in ("EXISTING", "RESET"):
                        since = e.revision
                    yield WatchEvent(kind, Service.of(e.service) if e.HasField("service") else None, e.revision)
            except grpc.RpcError as err:
                if err.code() not in _RETRYABLE:
                    raise SeaportError.of(err) from None
                self._conn.failed_on(err, generation)
            finally:
                call.cancel()
            failures += 1
            self._closed.wait(_backoff(failures))

    def close(self) -> None:
        """Ends the session, freeing its registrations, and closes the connection."""
        with self._cond:
            self._closed.set()
            if self._session is not None:
                self._session.ending.set()
            threads = list(self._threads)
            self._cond.notify_all()
        deadline = time.monotonic() + 5
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._conn.close()

    def __enter__(self) -> "SeaportClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
