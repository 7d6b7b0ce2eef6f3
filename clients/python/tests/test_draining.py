"""Draining registrations, a graceful close, and a server that says it is stopping."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from conftest import collect, snapshot, until, wait_for
from seaport import SeaportClient, SeaportError


def test_drain_marks_a_registration_draining_for_watchers_query_and_get(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as owner, SeaportClient([server.address]) as reader:
        reg = owner.register("web@1.2.3")
        events = collect(reader.watch("web"))
        assert snapshot(events) == [("EXISTING", reg.id), ("SYNCED", "")]
        assert owner.drain(reg.id).draining
        e = events.get(timeout=5)
        assert (e.kind, e.service.id, e.service.draining) == ("UPDATED", reg.id, True)
        assert owner.drain(reg.id).draining  # again: the same answer, and no event
        assert [(s.id, s.draining) for s in reader.query("web")] == [(reg.id, True)]
        with pytest.raises(SeaportError) as none:
            reader.get("web", timeout=0.3)  # get passes over draining instances
        assert none.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        other = owner.register("web@1.2.4")
        assert [s.id for s in reader.get("web", timeout=5)] == [other.id]
        e = events.get(timeout=5)
        assert (e.kind, e.service.id) == ("REGISTERED", other.id)
        assert owner.update(reg.id, {"zone": "b"}).draining  # an update keeps it draining


def test_catalog_picks_pass_over_draining_instances(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as owner, SeaportClient([server.address]) as reader:
        for id in ("a", "b", "c"):
            owner.register("web@1.2.3", id=id)
        with reader.catalog("web") as catalog:
            owner.drain("b")
            drained = [False, True, False]
            wait_for(lambda: [s.draining for s in catalog.services()] == drained, "the catalog seeing b drain")
            assert {catalog.pick().id for _ in range(6)} == {"a", "c"}
            assert {catalog.pick_random().id for _ in range(40)} == {"a", "c"}
            assert {catalog.pick_excluding(["a"]).id for _ in range(4)} == {"c"}
            assert catalog.pick_excluding(["a", "c"]) is None


def test_a_graceful_close_drains_then_waits_then_frees(seaportd):
    wait = 0.5
    server = seaportd()
    with SeaportClient([server.address]) as watcher:
        owner = SeaportClient([server.address], drain_wait=wait)
        reg = owner.register("web@1.2.3")
        events = collect(watcher.watch("web"))
        assert snapshot(events) == [("EXISTING", reg.id), ("SYNCED", "")]
        closing = threading.Thread(target=owner.close)
        closing.start()
        drained = events.get(timeout=5)
        drained_at = time.monotonic()
        assert (drained.kind, drained.service.id, drained.service.draining) == ("UPDATED", reg.id, True)
        freed = events.get(timeout=5)
        gap = time.monotonic() - drained_at
        assert (freed.kind, freed.service.id, freed.reason) == ("FREED", reg.id, "closed")
        assert wait * 0.9 <= gap < wait + 2, f"freed {gap:.2f}s after draining"
        closing.join(timeout=5)


def test_a_reasserted_registration_is_drained_again(seaportd):
    server = seaportd()
    with SeaportClient([server.address], ttl=2) as client:
        events = client.events()
        drained = client.register("web@1.2.3")
        kept = client.register("web@1.2.4")
        client.drain(drained.id)
        server.stop()
        server.start()
        assert until(events, "REASSERTED", timeout=15)[-1].count == 2
        found = {s.id: (s.port, s.draining) for s in client.query("web")}
        assert found == {drained.id: (drained.port, True), kept.id: (kept.port, False)}


def test_a_stopping_server_is_left_for_the_next_address_at_once(seaportd):
    ttl = 30.0
    first, second = seaportd(), seaportd()
    with SeaportClient([first.address, second.address], ttl=ttl) as client:
        events = client.events()
        reg = client.register("web@1.2.3")
        assert until(events, "CONNECTED")[-1].server == first.address
        stopped = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        seen = until(events, "REASSERTED", timeout=ttl)
        moved = time.monotonic() - stopped
        left = ("DISCONNECTED", first.address, "the server is stopping")
        assert (seen[0].kind, seen[0].server, seen[0].reason) == left
        assert [e.server for e in seen if e.kind == "CONNECTED"] == [second.address]
        first.proc.wait(timeout=10)
        exited = time.monotonic() - stopped
        print(f"registered again at the next server {moved:.2f}s after SIGTERM (ttl {ttl:g}s); "
              f"the stopping server exited after {exited:.2f}s")
        assert moved < 2.0
        assert exited < 3.0  # it waits for session streams to go, up to a 10s grace
        assert [(s.id, s.port) for s in client.query("web")] == [(reg.id, reg.port)]
        assert client.server == second.address
