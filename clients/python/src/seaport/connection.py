"""The channel to one of the client's servers, shared by reads, writes and the session."""

from __future__ import annotations

import queue
import random
import threading
import time
from typing import NamedTuple, Optional, Sequence

import grpc

from seaport.model import SeaportError
from seaport.v1 import seaport_pb2_grpc as pb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)

# gRPC's own reconnect backoff grows to two minutes; bounded like the
# session's, a channel comes back soon enough to resume a session in its ttl.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def backoff(failures: int, cap: float = 5.0) -> float:
    """Full jitter: a random wait below a bound that doubles with each failure, so clients do not return in step."""
    return random.uniform(0, min(cap, 0.1 * 2 ** min(failures, 10)))


class Link(NamedTuple):
    """The channel in use, its stub, its server's address, and the generation to report a failure of."""

    channel: grpc.Channel
    stub: pb_grpc.RegistryStub
    address: str
    generation: int


class Connection:
    """The channel to one of the servers, tried in the order given.

    A call that finds its server unavailable moves everyone on to the next
    address. With a single address the channel is kept (gRPC reconnects it),
    unless the path to it went silent: then only a new channel helps.
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

    @property
    def address(self) -> str:
        """The address in use now."""
        with self._lock:
            return self.addresses[self._index]

    def current(self) -> Link:
        """The channel in use, made if need be; SeaportError(CANCELLED) once closed."""
        with self._lock:
            if self._closed:
                raise SeaportError(grpc.StatusCode.CANCELLED, "the client is closed")
            address = self.addresses[self._index]
            if self._channel is None or self._stub is None:
                if self._credentials is not None:
                    self._channel = grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
                else:
                    self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
                self._stub = pb_grpc.RegistryStub(self._channel)
            return Link(self._channel, self._stub, address, self._generation)

    def failed(self, generation: int, *, renew: bool = False) -> None:
        """The server of `generation` failed: move on to the next address, unless someone already has.

        With one address nothing changes unless `renew` asks for a new channel.
        """
        with self._lock:
            if generation != self._generation or self._channel is None:
                return
            if len(self.addresses) == 1 and not renew:
                return
            # Closing cancels the calls still on it; their callers retry on the next server.
            self._channel.close()
            self._channel, self._stub = None, None
            self._index = (self._index + 1) % len(self.addresses)
            self._generation += 1

    def failed_on(self, err: grpc.RpcError, generation: int) -> bool:
        """Moves on when err says the server is unavailable; True if it did."""
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        self.failed(generation)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Connects to the first address that answers within timeout seconds; False when none does."""
        deadline = time.monotonic() + timeout
        failures = 0
        while True:
            link = self.current()
            states: "queue.Queue[grpc.ChannelConnectivity]" = queue.Queue()
            notify = states.put
            link.channel.subscribe(notify, try_to_connect=True)
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
                link.channel.unsubscribe(notify)
            self.failed(link.generation)
            failures += 1
            time.sleep(min(max(0.0, deadline - time.monotonic()), backoff(failures)))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub = None, None
