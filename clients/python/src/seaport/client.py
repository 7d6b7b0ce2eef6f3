"""SeaportClient: one session, kept alive by a background thread.

The thread holds the Heartbeat stream, reconnects with exponential backoff
and full jitter, resumes the session, and when the server no longer knows it
(a restart) opens a new one and re-registers exactly this client's own
registrations with their ids, hosts and ports.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
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
    pass


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


class SeaportClient:
    """A connection to Seaport holding one session; use as a context manager or call close().

    ttl is the session ttl to ask for, in seconds; 0 takes the server's --default-ttl.
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
        self._addresses = list(addresses)
        self._next = itertools.cycle(range(len(self._addresses)))
        self._namespace = namespace
        self._ttl = ttl
        self._credentials = grpc.ssl_channel_credentials(ca, key, cert) if ca or cert else None
        self._request_timeout = request_timeout
        self._cond = threading.Condition()
        self._stub: Optional[pb_grpc.RegistryStub] = None
        self._session_id: Optional[str] = None
        self._generation = 0
        self._fatal: Optional[SeaportError] = None
        self._owned: dict[str, pb.RegisterRequest] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seaport-session", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._stub is not None or self._fatal is not None, connect_timeout)
            if self._fatal is not None:
                self.close()
                raise self._fatal
            if self._stub is None:
                self.close()
                raise SeaportError(grpc.StatusCode.UNAVAILABLE, f"no Seaport server reachable at {', '.join(self._addresses)}")

    # -- the session thread -------------------------------------------------

    def _channel(self, address: str) -> grpc.Channel:
        if self._credentials is not None:
            return grpc.secure_channel(address, self._credentials)
        return grpc.insecure_channel(address)

    def _run(self) -> None:
        failures = 0
        session: Optional[str] = None
        while not self._closed.is_set():
            address = self._addresses[next(self._next)]
            try:
                session = self._hold(address, session)
                return
            except _SessionLost:
                session = None
                continue
            except Exception:  # a broken connection or stream: back off, try the next server
                pass
            with self._cond:
                self._stub = None
            failures += 1
            # Full jitter: spread reconnects so clients do not return in step.
            self._closed.wait(random.uniform(0, min(5.0, 0.1 * 2 ** min(failures, 10))))

    def _hold(self, address: str, session: Optional[str]) -> Optional[str]:
        channel = self._channel(address)
        stub = pb_grpc.RegistryStub(channel)
        outgoing: "queue.Queue[Optional[pb.HeartbeatRequest]]" = queue.Queue()
        if session:
            outgoing.put(pb.HeartbeatRequest(resume=pb.ResumeSession(session_id=session)))
        else:
            outgoing.put(pb.HeartbeatRequest(open=pb.OpenSession(ttl_ms=int(self._ttl * 1000), client_name="seaport-python")))

        def requests() -> Iterator[pb.HeartbeatRequest]:
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        replies = stub.Heartbeat(requests())
        try:
            opened = next(replies).opened
        except grpc.RpcError as err:
            channel.close()
            if err.code() == grpc.StatusCode.NOT_FOUND and session:
                raise _SessionLost() from err
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                with self._cond:
                    self._fatal = SeaportError.of(err)
                    self._cond.notify_all()
                self._closed.set()
                return None
            raise
        if not opened.resumed:
            self._reassert(stub, opened.session_id)
        with self._cond:
            self._stub, self._session_id = stub, opened.session_id
            self._generation += 1
            self._cond.notify_all()

        interval = max(opened.ttl_ms / 3000.0, 0.05)

        def ping() -> None:
            for seq in itertools.count(1):
                if self._closed.wait(interval):
                    outgoing.put(pb.HeartbeatRequest(close=pb.CloseSession()))
                    return
                outgoing.put(pb.HeartbeatRequest(ping=pb.Ping(seq=seq)))

        pinger = threading.Thread(target=ping, name="seaport-ping", daemon=True)
        pinger.start()
        try:
            for reply in replies:
                if reply.HasField("closed"):
                    return opened.session_id
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise _SessionLost() from err
            raise
        finally:
            outgoing.put(None)
            channel.close()
        if self._closed.is_set():
            return opened.session_id
        raise ConnectionError("the server ended the session stream")

    def _reassert(self, stub: pb_grpc.RegistryStub, session_id: str) -> None:
        for request in list(self._owned.values()):
            again = pb.RegisterRequest()
            again.CopyFrom(request)
            again.session_id = session_id
            try:
                stub.Register(again, timeout=self._request_timeout)
            except grpc.RpcError:
                pass  # another client may hold the port now; the rest still go back

    # -- calls ----------------------------------------------------------------

    def _current(self) -> tuple[pb_grpc.RegistryStub, str, int]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._stub is not None or self._closed.is_set(), self._request_timeout):
                raise SeaportError(grpc.StatusCode.UNAVAILABLE, f"no Seaport server reachable at {', '.join(self._addresses)}")
            if self._stub is None:
                raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
            return self._stub, self._session_id or "", self._generation

    def _wait_for_new(self, generation: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != generation or self._closed.is_set(), self._request_timeout)

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
        """Registers role (`name@1.2.3`); port 0 has the registry assign one."""
        stub, session, _ = self._current()
        request = pb.RegisterRequest(
            session_id=session, role=role, namespace=self._namespace if namespace is None else namespace,
            host=host, port=port, id=id, metadata=dict(metadata or {}),
        )
        try:
            service = Service.of(stub.Register(request, timeout=self._request_timeout).service)
        except grpc.RpcError as err:
            raise SeaportError.of(err) from None
        request.id, request.host, request.port = service.id, service.host, service.port
        self._owned[service.id] = request
        return Registration(service.id, service.host, service.port, service)

    def update(self, id: str, metadata: Mapping[str, str], merge: bool = False) -> Service:
        """Replaces (or merges into) a registration's metadata."""
        stub, session, _ = self._current()
        try:
            reply = stub.Update(pb.UpdateRequest(session_id=session, id=id, metadata=dict(metadata), merge=merge), timeout=self._request_timeout)
        except grpc.RpcError as err:
            raise SeaportError.of(err) from None
        service = Service.of(reply.service)
        if id in self._owned:
            self._owned[id].metadata.clear()
            self._owned[id].metadata.update(service.metadata)
        return service

    def free(self, id: str) -> Service:
        """Frees a registration."""
        stub, session, _ = self._current()
        try:
            reply = stub.Free(pb.FreeRequest(session_id=session, id=id), timeout=self._request_timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                self._owned.pop(id, None)
            raise SeaportError.of(err) from None
        self._owned.pop(id, None)
        return Service.of(reply.service)

    def query(self, pattern: str = "") -> list[Service]:
        """The services matching `name`, `name@range` or everything, now."""
        stub, _, _ = self._current()
        try:
            reply = stub.Query(pb.QueryRequest(pattern=pattern, namespace=self._namespace), timeout=self._request_timeout)
        except grpc.RpcError as err:
            raise SeaportError.of(err) from None
        return [Service.of(s) for s in reply.services]

    def get(self, pattern: str, timeout: Optional[float] = None) -> list[Service]:
        """Waits until something matches; raises SeaportError(DEADLINE_EXCEEDED) after `timeout` seconds."""
        while True:
            stub, _, generation = self._current()
            try:
                reply = stub.Get(pb.GetRequest(pattern=pattern, namespace=self._namespace), timeout=timeout)
                return [Service.of(s) for s in reply.services]
            except grpc.RpcError as err:
                if err.code() in _RETRYABLE and timeout is None and not self._closed.is_set():
                    self._wait_for_new(generation)
                    continue
                raise SeaportError.of(err) from None

    def watch(self, pattern: str = "") -> Iterator[WatchEvent]:
        """The matching services (EXISTING), SYNCED, then every change; survives reconnects."""
        since = 0
        while not self._closed.is_set():
            stub, _, generation = self._current()
            try:
                for e in stub.Watch(pb.WatchRequest(pattern=pattern, namespace=self._namespace, since_revision=since)):
                    kind = pb.WatchEvent.Kind.Name(e.kind)
                    if kind not in ("EXISTING", "RESET"):
                        since = e.revision
                    yield WatchEvent(kind, Service.of(e.service) if e.HasField("service") else None, e.revision)
            except grpc.RpcError as err:
                if err.code() not in _RETRYABLE:
                    raise SeaportError.of(err) from None
            self._wait_for_new(generation)

    def close(self) -> None:
        """Ends the session, freeing its registrations."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "SeaportClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
