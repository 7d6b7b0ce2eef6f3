"""Subscriptions to a client's events, each with a queue of its own, so a slow reader slows no one."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Optional

from seaport.model import ClientEvent


class ClientEvents:
    """The client's events from the moment of subscribing: iterate it, or get() with a timeout.

    Iteration ends once the client is closed and every event before that
    was read. close() stops the subscription.
    """

    def __init__(self, hub: "EventHub"):
        self._hub = hub
        self._queue: "queue.Queue[Optional[ClientEvent]]" = queue.Queue()

    def get(self, timeout: Optional[float] = None) -> ClientEvent:
        """The next event; queue.Empty after timeout seconds, EOFError once the client is closed."""
        event = self._queue.get(timeout=timeout)
        if event is None:
            self._queue.put(None)  # every later get ends too
            raise EOFError("the client is closed")
        return event

    def __iter__(self) -> Iterator[ClientEvent]:
        return self

    def __next__(self) -> ClientEvent:
        try:
            return self.get()
        except EOFError:
            raise StopIteration from None

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def _put(self, event: Optional[ClientEvent]) -> None:
        self._queue.put(event)


class EventHub:
    """Hands each event to every subscription."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[ClientEvents] = []
        self._ended = False

    def subscribe(self) -> ClientEvents:
        subscription = ClientEvents(self)
        with self._lock:
            if self._ended:
                subscription._put(None)
            else:
                self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: ClientEvents) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
        subscription._put(None)

    def emit(self, event: ClientEvent) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for s in subscriptions:
            s._put(event)

    def end(self) -> None:
        """The client closed: every subscription ends after the events it holds."""
        with self._lock:
            subscriptions, self._subscriptions, self._ended = self._subscriptions, [], True
        for s in subscriptions:
            s._put(None)
