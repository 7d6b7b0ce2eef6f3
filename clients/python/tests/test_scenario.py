"""The shared client scenario (docs/client-scenario.md) against a real seaportd."""

from __future__ import annotations

import queue
import re
import threading
import time

import grpc
import pytest

from conftest import TcpProxy, certificates, collect, snapshot, tls_flags, wait_for
from seaport import SeaportClient, SeaportError


def test_register_get_and_query(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as owner, SeaportClient([server.address]) as other:
        reg = owner.register("web@1.2.3", metadata={"zone": "a"})
        assert 10000 <= reg.port <= 65535
        assert reg.service.metadata == {"zone": "a"}
        found = other.get("web@1.2.x", timeout=5)
        assert [s.id for s in found] == [reg.id]
        assert found[0].address == f"{reg.host}:{reg.port}"
        assert other.query("web@2.x") == []


def test_watch_sees_snapshot_update_and_free(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as client:
        reg = client.register("web@1.2.3", metadata={"zone": "a"})
        events = client.watch("web")
        first, synced = next(events), next(events)
        assert (first.kind, first.service.id) == ("EXISTING", reg.id)
        assert synced.kind == "SYNCED"
        client.update(reg.id, {"zone": "b"})
        updated = next(events)
        assert (updated.kind, updated.service.metadata) == ("UPDATED", {"zone": "b"})
        client.free(reg.id)
        freed = next(events)
        assert (freed.kind, freed.service.id, freed.reason) == ("FREED", reg.id, "owner")
        assert freed.revision > updated.revision


def test_get_started_before_the_registration_completes_when_it_exists(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as waiter, SeaportClient([server.address]) as owner:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("found", waiter.get("web@1.2.x", timeout=10)))
        t.start()
        time.sleep(0.3)
        reg = owner.register("web@1.2.9")
        t.join(timeout=10)
        assert [s.id for s in result["found"]] == [reg.id]
        with pytest.raises(SeaportError) as timeout:
            waiter.get("nobody", timeout=0.3)
        assert timeout.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_restarted_server_gets_the_registration_back_with_its_port(seaportd):
    server = seaportd()
    with SeaportClient([server.address], ttl=5) as client:
        reg = client.register("web@1.2.3", metadata={"zone": "a"})
        server.stop()
        server.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                back = client.query("web")
                if back:
                    break
            except SeaportError:
                pass
            assert time.monotonic() < deadline, "the registration never came back"
            time.sleep(0.1)
        assert [(s.id, s.port, s.metadata["zone"]) for s in back] == [(reg.id, reg.port, "a")]


def test_a_bad_range_is_an_invalid_argument_with_the_servers_message(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as client:
        with pytest.raises(SeaportError) as bad:
            client.query("web@1.2.3.4")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert '"1.2.3.4" has more than three version parts' in bad.value.message


def test_over_mtls_a_certificate_registers_and_no_certificate_only_reads(seaportd, tmp_path):
    pki, ca = certificates(tmp_path, "py")
    server = seaportd(*tls_flags(pki))
    cert, key = (pki / "client-py.pem").read_bytes(), (pki / "client-py-key.pem").read_bytes()
    with SeaportClient([server.address], ca=ca, cert=cert, key=key) as client, SeaportClient([server.address], ca=ca) as reader:
        reg = client.register("web@1.2.3")
        assert reg.service.owner == "py"
        # A reader needs no certificate: it opens no session, which the server would refuse it.
        assert [s.id for s in reader.query("web")] == [reg.id]
        assert [s.id for s in reader.get("web", timeout=5)] == [reg.id]
        events = reader.watch("web")
        assert [next(events).kind, next(events).kind] == ["EXISTING", "SYNCED"]
        with pytest.raises(SeaportError) as refused:
            reader.register("web@1.2.4")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_reads_open_no_session_and_the_first_register_opens_one(seaportd):
    server = seaportd()
    with SeaportClient([server.address]) as client:
        assert client.query("web") == []
        assert [s.name for s in client.get("seaport", timeout=5)] == ["seaport"]  # seaportd registers itself
        events = client.watch("web")
        assert next(events).kind == "SYNCED"
        assert "session opened" not in server.log()
        reg = client.register("web@1.2.3")
        assert server.log().count("session opened") == 1
        client.free(reg.id)
        wait_for(lambda: "session closed" in server.log(), "closing the session with the last free")
        assert client.query("web") == []
        assert server.log().count("session opened") == 1


def test_a_dropped_connection_resumes_the_session(seaportd):
    server = seaportd()
    with TcpProxy(server.address) as proxy, SeaportClient([server.address]) as watcher, \
            SeaportClient([proxy.address], ttl=2) as client:
        reg = client.register("web@1.2.3", metadata={"zone": "a"})
        events = collect(watcher.watch("web"))
        assert snapshot(events) == [("EXISTING", reg.id), ("SYNCED", "")]
        proxy.cut()
        wait_for(lambda: "session resumed" in server.log(), "resuming the session")
        assert proxy.accepted >= 2
        # Twice the ttl: had the session not been resumed, it would have expired and freed web.
        with pytest.raises(queue.Empty):
            e = events.get(timeout=4)
            pytest.fail(f"the watcher saw {e.kind} for {e.service and e.service.id}")
        assert [(s.id, s.port) for s in watcher.query("web")] == [(reg.id, reg.port)]
        assert server.log().count("session opened") == 1
        client.update(reg.id, {"zone": "b"})  # the session is still this client's
        updated = events.get(timeout=5)
        assert (updated.kind, updated.service.id, updated.service.port) == ("UPDATED", reg.id, reg.port)


def test_a_dropped_connection_resumes_the_session_through_the_next_address(seaportd):
    server = seaportd()
    with TcpProxy(server.address) as first, TcpProxy(server.address) as second, \
            SeaportClient([server.address]) as watcher, SeaportClient([first.address, second.address], ttl=2) as client:
        reg = client.register("web@1.2.3", metadata={"zone": "a"})
        events = collect(watcher.watch("web"))
        assert snapshot(events) == [("EXISTING", reg.id), ("SYNCED", "")]
        first.close()
        wait_for(lambda: "session resumed" in server.log(), "resuming the session")
        assert second.accepted >= 1
        client.update(reg.id, {"zone": "b"})
        updated = events.get(timeout=5)
        assert (updated.kind, updated.service.id, updated.service.port) == ("UPDATED", reg.id, reg.port)
        assert server.log().count("session opened") == 1


def test_an_admins_free_is_final_and_ends_the_owners_session(seaportd, tmp_path):
    pki, ca = certificates(tmp_path, "py", "ops")
    policy = tmp_path / "policy.toml"
    policy.write_text('admins = ["ops"]\n[[allow]]\nidentities = ["py"]\nnames = ["web"]\n')
    server = seaportd(*tls_flags(pki), "--policy", str(policy))

    def client(name: str, **kw) -> SeaportClient:
        cert, key = (pki / f"client-{name}.pem").read_bytes(), (pki / f"client-{name}-key.pem").read_bytes()
        return SeaportClient([server.address], ca=ca, cert=cert, key=key, **kw)

    with client("py", ttl=1) as owner, client("ops") as admin:
        reg = owner.register("web@1.2.3")
        label = re.search(r"session opened session=(\d+) .*identity=py", server.log()).group(1)
        admin.free(reg.id)
        # Told at its next ping, the owner forgets the registration and, holding nothing, closes its session.
        wait_for(lambda: f"session closed session={label} freed=0" in server.log(), "the owner closing its session")
