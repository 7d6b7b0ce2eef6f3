"""Each call of the client against a real seaportd: register, bind, update, get, watch and the catalog."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections import Counter

import grpc
import pytest

from conftest import TcpProxy, collect, free_port, snapshot, wait_for
from seaport import SeaportClient, SeaportError


def test_register_takes_the_port_given_and_refuses_one_held(seaportd):
    server = seaportd()
    port = free_port()
    with SeaportClient([server.address]) as client, SeaportClient([server.address]) as other:
        reg = client.register("web@1.2.3", port=port)
        assert reg.port == port
        with pytest.raises(SeaportError) as held:
            other.register("api@1.0.0", port=port)
        assert held.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_bind_returns_a_socket_listening_on_the_registered_port(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as client:
        listener, reg = client.bind("web@1.2.3", metadata={"zone": "a"}, bind_ip="127.0.0.1")
        with listener:
            assert listener.getsockname() == ("127.0.0.1", reg.port)
            with socket.create_connection(("127.0.0.1", reg.port), timeout=5):
                listener.accept()[0].close()
            assert [(s.id, s.port, s.metadata["zone"]) for s in client.query("web")] == [(reg.id, reg.port, "a")]


def adjacent_free_ports() -> int:
    """A port p with p and p + 1 both free now."""
    for _ in range(100):
        p = free_port()
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports")


def test_bind_passes_over_a_port_taken_outside_the_registry(seaportd):
    p = adjacent_free_ports()
    server = seaportd("--port-range", f"{p}-{p + 1}")
    with socket.create_server(("0.0.0.0", p)), SeaportClient([server.address]) as client:
        listener, reg = client.bind("web@1.2.3")
        with listener:
            assert reg.port == p + 1 == listener.getsockname()[1]
            assert [s.id for s in client.query("web")] == [reg.id]
            # A port asked for by number is not swapped: the error says which and why, and nothing stays registered.
            with pytest.raises(OSError) as taken:
                client.bind("api@1.0.0", port=p)
            assert taken.value.errno == errno.EADDRINUSE
            assert f"({p})" in str(taken.value) and "outside the registry" in str(taken.value)
            assert client.query("api") == []


def test_bind_gives_up_after_a_few_ports_all_taken(seaportd):
    p = free_port()
    server = seaportd("--port-range", f"{p}-{p}", "--port-quarantine", "0s")
    with socket.create_server(("0.0.0.0", p)), SeaportClient([server.address]) as client:
        with pytest.raises(OSError) as taken:
            client.bind("web@1.2.3")
        assert f"({', '.join([str(p)] * 5)})" in str(taken.value)
        assert client.query("web") == []


def test_update_replaces_merges_and_removes_keys(seaportd):
    server = seaportd()
    with SeaportClient([server.address], ttl=1) as client:
        reg = client.register("web@1.2.3", metadata={"zone": "a", "weight": "1"})
        assert client.update(reg.id, {"zone": "b"}).metadata == {"zone": "b"}
        merged = client.update(reg.id, {"weight": "2", "tier": "gold"}, merge=True)
        assert merged.metadata == {"zone": "b", "weight": "2", "tier": "gold"}
        removed = client.update(reg.id, {"zone": "c"}, merge=True, remove_keys=["tier"])
        assert removed.metadata == {"zone": "c", "weight": "2"}
        assert client.query("web")[0].metadata == {"zone": "c", "weight": "2"}
        with pytest.raises(ValueError, match="merge=True"):
            client.update(reg.id, remove_keys=["zone"])


def test_get_waits_within_its_deadline_across_a_dropped_connection(seaportd):
    server = seaportd()
    with TcpProxy(server.address) as proxy, SeaportClient([proxy.address]) as waiter, \
            SeaportClient([server.address]) as owner:
        started = time.monotonic()
        with pytest.raises(SeaportError) as late:
            waiter.get("nobody", timeout=0.5)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.45 <= time.monotonic() - started < 1.5

        result = {}
        t = threading.Thread(target=lambda: result.setdefault("found", waiter.get("web", timeout=10)))
        t.start()
        wait_for(lambda: server.metric("get_waiters") == 1, "the get waiting at the server")
        proxy.cut()  # the call dies with its connection: only asking again can bring the answer
        reg = owner.register("web@1.2.3")
        t.join(timeout=10)
        assert [s.id for s in result["found"]] == [reg.id]
        assert proxy.accepted >= 2


def test_a_watch_resumes_from_its_last_revision_after_a_dropped_connection(seaportd):
    server = seaportd()
    with TcpProxy(server.address) as proxy, SeaportClient([proxy.address]) as watcher, \
            SeaportClient([server.address]) as owner:
        web = owner.register("web@1.2.3", metadata={"zone": "a"})
        stream = watcher.watch("web")
        events = collect(stream)
        assert snapshot(events) == [("EXISTING", web.id), ("SYNCED", "")]
        before = stream.revision
        proxy.cut()
        # Changes while the watch is away come after its revision: replayed, with no new snapshot.
        owner.update(web.id, {"zone": "b"})
        other = owner.register("web@2.0.0")
        seen = [events.get(timeout=10) for _ in range(2)]
        assert [(e.kind, e.service.id) for e in seen] == [("UPDATED", web.id), ("REGISTERED", other.id)]
        assert proxy.accepted >= 2
        assert before < seen[0].revision < seen[1].revision == stream.revision

        # A new watch from a revision replays only what came after it.
        replay = collect(watcher.watch("web", since_revision=seen[0].revision))
        e = replay.get(timeout=10)
        assert (e.kind, e.service.id) == ("REGISTERED", other.id)


def test_a_catalog_follows_its_watch_and_picks_round_robin_at_random_or_excluding(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as owner, SeaportClient([server.address]) as reader:
        for id in ("a", "b", "c"):
            owner.register("web@1.2.3", id=id)
        with reader.catalog("web") as catalog:
            assert [s.id for s in catalog.services()] == ["a", "b", "c"]
            picks = [catalog.pick().id for _ in range(6)]
            assert Counter(picks) == {"a": 2, "b": 2, "c": 2}
            assert picks[:3] == sorted(picks[:3]) and picks[3:] == picks[:3]
            assert {catalog.pick_excluding(["a"]).id for _ in range(4)} == {"b", "c"}
            assert catalog.pick_excluding(["a", "b", "c"]) is None
            assert {catalog.pick_random().id for _ in range(60)} == {"a", "b", "c"}

            owner.register("web@1.2.3", id="d")
            owner.free("a")
            wait_for(lambda: [s.id for s in catalog.services()] == ["b", "c", "d"], "the catalog following the watch")
            owner.update("b", {"zone": "x"})
            wait_for(lambda: catalog.services()[0].metadata == {"zone": "x"}, "the catalog seeing an update")
        with pytest.raises(SeaportError) as bad:
            reader.catalog("web@1.2.3.4")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
