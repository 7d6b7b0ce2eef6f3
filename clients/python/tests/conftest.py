"""Starts real seaportd processes (the built binary), and TCP proxies in front of them, for the tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from seaport import ClientEvent, ClientEvents, SeaportError, WatchEvent

ROOT = Path(__file__).resolve().parents[3]


def binary(name: str) -> str:
    env = {"seaportd": "SEAPORTD", "seaportctl": "SEAPORTCTL"}[name]
    return os.environ.get(env, str(ROOT / "target" / "debug" / name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Polls condition until it holds; fails the test saying what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.02)


class Seaportd:
    """A seaportd child process on 127.0.0.1:port, logging its sessions (opened, resumed, closed) to a file,
    with its metrics on an admin port."""

    def __init__(self, port: int, *flags: str):
        self.port, self.flags = port, flags
        self.address = f"127.0.0.1:{port}"
        self.admin = f"127.0.0.1:{free_port()}"
        self._log = tempfile.NamedTemporaryFile(prefix="seaportd-", suffix=".log")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [binary("seaportd"), "--listen", self.address, "--drain-delay", "0s",
             "--admin-listen", self.admin, "--log", "warn,seaport_server::grpc::heartbeat=info", *self.flags],
            stderr=self._log, env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"seaportd did not listen on {self.address}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)

    def metric(self, name: str) -> float:
        """The value of the metric `seaport_<name>` (one with no labels) now."""
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return float(re.search(rf"^seaport_{name} (\S+)$", text, re.M).group(1))

    def log(self) -> str:
        """Everything seaportd has logged so far."""
        return Path(self._log.name).read_text()


class TcpProxy:
    """Forwards connections on 127.0.0.1:port to target. cut() drops every
    connection open now and keeps accepting new ones; silence() makes every
    connection, now and later, a dead path; close() stops all."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted = 0
        self._silent = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._open += [downstream, upstream]
                self.accepted += 1
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self._silent.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        if self._silent.is_set():
            return  # a dead path passes on nothing, not even that one side hung up
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drops every connection open now, both ways."""
        with self._lock:
            dropped, self._open = self._open, []
        for s in dropped:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv, which close alone would not
            except OSError:
                pass
            s.close()

    def silence(self) -> None:
        """From now on forwards nothing either way, keeping every socket open: a path gone dead without a reset."""
        self._silent.set()

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept
        except OSError:
            pass
        self._listener.close()
        self.cut()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def seaportd():
    servers = []

    def start(*flags: str) -> Seaportd:
        server = Seaportd(free_port(), *flags)
        servers.append(server)
        return server

    yield start
    for s in servers:
        if s.proc.poll() is None:
            s.stop()
        s._log.close()


def certificates(tmp_path, *clients: str):
    """A development CA, server certificate and client certificates: (pki directory, ca PEM)."""
    pki = tmp_path / "pki"
    names = [arg for client in clients for arg in ("--client", client)]
    subprocess.run([binary("seaportctl"), "certs", "init", str(pki), *names], check=True, capture_output=True)
    return pki, (pki / "ca.pem").read_bytes()


def tls_flags(pki) -> list[str]:
    return ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server-key.pem"), "--client-ca", str(pki / "ca.pem")]


def collect(events: Iterator[WatchEvent]) -> "queue.Queue[WatchEvent]":
    """Feeds a watch's events into a queue from a thread, so a test can wait for one, or for none."""
    out: "queue.Queue[WatchEvent]" = queue.Queue()

    def pump() -> None:
        try:
            for e in events:
                out.put(e)
        except SeaportError:
            pass  # the watching client closed

    threading.Thread(target=pump, daemon=True).start()
    return out


def snapshot(events: "queue.Queue[WatchEvent]") -> list[tuple[str, str]]:
    """The watch's snapshot, up to SYNCED, as (kind, id)."""
    seen = []
    while not seen or seen[-1][0] != "SYNCED":
        e = events.get(timeout=10)
        seen.append((e.kind, e.service.id if e.service else ""))
    return seen


def until(events: ClientEvents, kind: str, timeout: float = 10) -> list[ClientEvent]:
    """The client's events up to and including the first of `kind`; fails the test if none comes in time."""
    deadline = time.monotonic() + timeout
    seen: list[ClientEvent] = []
    while not seen or seen[-1].kind != kind:
        try:
            seen.append(events.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            pytest.fail(f"no {kind} within {timeout}s; saw {seen}")
    return seen
