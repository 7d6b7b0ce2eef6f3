"""The client's own types: what calls return and what it tells its subscribers, never generated ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import grpc

from seaport.v1 import seaport_pb2 as pb


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
    draining: bool = False  # stopping: it should get no new traffic

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def role(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @classmethod
    def of(cls, s: pb.Service) -> "Service":
        return cls(s.id, s.name, s.version, s.host, s.port, dict(s.metadata), s.namespace, s.owner, s.draining)


@dataclass(frozen=True)
class Registration:
    """A registration of this client's: its id, host, port and full record."""

    id: str
    host: str
    port: int
    service: Service


# FreeReason on the wire, as WatchEvent.reason and ClientEvent.reason spell it.
_REASONS = {
    pb.FREE_REASON_OWNER: "owner",
    pb.FREE_REASON_CLOSED: "closed",
    pb.FREE_REASON_EXPIRED: "expired",
    pb.FREE_REASON_ADMIN: "admin",
}


@dataclass(frozen=True)
class WatchEvent:
    """One watch event: kind is EXISTING, SYNCED, REGISTERED, UPDATED, FREED or RESET.

    For FREED, reason says why: "owner", "closed", "expired" or "admin"
    ("" when an update moved the service out of the watched set).
    """

    kind: str
    service: Optional[Service]
    revision: int
    reason: str = ""

    @classmethod
    def of(cls, e: pb.WatchEvent) -> "WatchEvent":
        service = Service.of(e.service) if e.HasField("service") else None
        return cls(pb.WatchEvent.Kind.Name(e.kind), service, e.revision, _REASONS.get(e.reason, ""))


@dataclass(frozen=True)
class ClientEvent:
    """Something that happened to this client's session or registrations.

    kind is one of:
      CONNECTED        a new session was opened at `server`
      RESUMED          the session was resumed at `server` after its stream broke
      DISCONNECTED     the session's stream to `server` broke; `reason` says why
      REASSERTED       `count` registrations were registered again under a new session
      REASSERT_FAILED  registration `id` could not be; `reason` is the server's
      FREED            registration `id` is gone: `reason` is "owner" (free), "closed"
                       (close), "expired" (the server lost the session) or "admin"
      EVICTED          an admin (`by`) freed registration `id`: final, it is never re-asserted
    """

    kind: str
    server: str = ""
    id: str = ""
    reason: str = ""
    by: str = ""
    count: int = 0
