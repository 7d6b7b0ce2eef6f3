"""The shared client scenario (docs/client-scenario.md) against a real seaportd."""

from __future__ import annotations

import subprocess
import threading
import time

import grpc
import pytest

from conftest import binary
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
        assert (freed.kind, freed.service.id) == ("FREED", reg.id)
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


def test_over_mtls_a_certificate_registers_and_no_certificate_is_refused(seaportd, tmp_path):
    pki = tmp_path / "pki"
    subprocess.run([binary("seaportctl"), "certs", "init", str(pki), "--client", "py"], check=True, capture_output=True)
    server = seaportd(
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server-key.pem"), "--client-ca", str(pki / "ca.pem")
    )
    ca = (pki / "ca.pem").read_bytes()
    cert, key = (pki / "client-py.pem").read_bytes(), (pki / "client-py-key.pem").read_bytes()
    with SeaportClient([server.address], ca=ca, cert=cert, key=key) as client:
        reg = client.register("web@1.2.3")
        assert reg.service.owner == "py"
    with pytest.raises(SeaportError) as refused:
        SeaportClient([server.address], ca=ca)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
