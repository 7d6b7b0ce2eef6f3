"""The session across broken streams, restarts, failover and dead paths, and the events that tell of it."""

from __future__ import annotations

import queue
import time

import pytest

from conftest import TcpProxy, certificates, collect, free_port, snapshot, tls_flags, until, wait_for
from seaport import SeaportClient


def test_events_tell_connected_resumed_reasserted_and_each_free_with_its_reason(seaportd):
    server = seaportd()
    with TcpProxy(server.address) as proxy:
        client = SeaportClient([proxy.address], ttl=2)
        events = client.events()
        a = client.register("web@1.2.3")
        b = client.register("api@1.0.0")
        [connected] = until(events, "CONNECTED")
        assert connected.server == proxy.address

        proxy.cut()
        seen = until(events, "RESUMED")
        assert [e.kind for e in seen] == ["DISCONNECTED", "RESUMED"]

        server.stop()
        server.start()
        seen = until(events, "REASSERTED")
        assert {(e.id, e.reason) for e in seen if e.kind == "FREED"} == {(a.id, "expired"), (b.id, "expired")}
        assert [e.kind for e in seen if e.kind != "FREED"][-2:] == ["CONNECTED", "REASSERTED"]
        assert seen[-1].count == 2

        client.free(a.id)
        freed = events.get(timeout=5)
        assert (freed.kind, freed.id, freed.reason) == ("FREED", a.id, "owner")
        client.close()
        freed = events.get(timeout=5)
        assert (freed.kind, freed.id, freed.reason) == ("FREED", b.id, "closed")
        with pytest.raises(EOFError):
            events.get(timeout=5)


def test_only_its_own_registrations_are_reasserted_not_one_an_admin_evicted(seaportd, tmp_path):
    pki, ca = certificates(tmp_path, "py", "ops")
    policy = tmp_path / "policy.toml"
    policy.write_text('admins = ["ops"]\n[[allow]]\nidentities = ["py"]\nnames = ["web"]\n')
    server = seaportd(*tls_flags(pki), "--policy", str(policy))

    def client(name: str, **kw) -> SeaportClient:
        cert, key = (pki / f"client-{name}.pem").read_bytes(), (pki / f"client-{name}-key.pem").read_bytes()
        return SeaportClient([server.address], ca=ca, cert=cert, key=key, **kw)

    with client("py", ttl=1) as owner, client("ops") as admin, client("ops") as reader:
        events = owner.events()
        kept = owner.register("web@1.2.3")
        evicted = owner.register("web@1.2.4")
        admin.free(evicted.id)
        seen = until(events, "EVICTED")
        assert (seen[-1].id, seen[-1].by) == (evicted.id, "ops")
        freed = events.get(timeout=5)
        assert (freed.kind, freed.id, freed.reason) == ("FREED", evicted.id, "admin")

        server.stop()
        server.start()
        seen = until(events, "REASSERTED", timeout=15)
        assert seen[-1].count == 1
        assert [(s.id, s.port) for s in reader.query("web")] == [(kept.id, kept.port)]


def test_a_client_given_a_dead_address_first_uses_the_next(seaportd):
    server = seaportd()
    dead = f"127.0.0.1:{free_port()}"
    with SeaportClient([dead, server.address], connect_timeout=5) as client:
        assert client.server == server.address
        reg = client.register("web@1.2.3")
        assert [s.id for s in client.query("web")] == [reg.id]


def test_when_its_server_stops_the_client_moves_to_the_next_and_registers_again(seaportd):
    first, second = seaportd(), seaportd()
    with SeaportClient([first.address, second.address], ttl=2) as client:
        events = client.events()
        reg = client.register("web@1.2.3", metadata={"zone": "a"})
        assert until(events, "CONNECTED")[-1].server == first.address
        first.stop()
        # The second server never knew the session: the client opens one there and registers again.
        seen = until(events, "REASSERTED")
        assert [e.server for e in seen if e.kind == "CONNECTED"] == [second.address]
        assert seen[-1].count == 1
        assert [(s.id, s.port, s.metadata["zone"]) for s in client.query("web")] == [(reg.id, reg.port, "a")]
        assert client.server == second.address


def test_a_silent_path_is_left_for_the_next_address_before_the_session_expires(seaportd):
    ttl = 2.0
    server = seaportd()
    with TcpProxy(server.address) as proxy, SeaportClient([server.address]) as watcher, \
            SeaportClient([proxy.address, server.address], ttl=ttl) as client:
        events = client.events()
        reg = client.register("web@1.2.3")
        assert until(events, "CONNECTED")[-1].server == proxy.address
        changes = collect(watcher.watch("web"))
        assert snapshot(changes) == [("EXISTING", reg.id), ("SYNCED", "")]

        silenced = time.monotonic()
        proxy.silence()
        seen = until(events, "RESUMED", timeout=ttl)
        moved = time.monotonic() - silenced
        print(f"silent path left, session resumed over the next address in {moved:.2f}s (ttl {ttl}s)")
        assert [(e.kind, e.server) for e in seen] == [("DISCONNECTED", proxy.address), ("RESUMED", server.address)]
        assert "no answer to pings" in seen[0].reason
        assert moved < ttl

        # Past the ttl from the silence: an expiry would have shown as FREED by now.
        with pytest.raises(queue.Empty):
            e = changes.get(timeout=silenced + 2 * ttl - time.monotonic())
            pytest.fail(f"the watcher saw {e.kind} for {e.service and e.service.id}")
        assert [(s.id, s.port) for s in client.query("web")] == [(reg.id, reg.port)]
        assert server.log().count("session opened") == 1
        wait_for(lambda: client.update(reg.id, {"zone": "b"}).metadata == {"zone": "b"}, "an update over the new path")
