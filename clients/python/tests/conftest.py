"""Starts real seaportd processes (the built binary), and TCP proxies in front of them, for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

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
    """A seaportd child process on 127.0.0.1:port, logging its sessions (opened, resumed, closed) to a file."""

    def __init__(self, port: int, *flags: str):
        self.port, self.flags = port, flags
        self.address = f"127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="seaportd-", suffix=".log")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [binary("seaportd"), "--listen", self.address, "--drain-delay", "0s",
             "--log", "warn,seaport_server::grpc::heartbeat=info", *self.flags],
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

    def log(self) -> str:
        """Everything seaportd has logged so far."""
        return Path(self._log.name).read_text()


class TcpProxy:
    """Forwards connections on 127.0.0.1:port to target. cut() drops every
    connection open now and keeps accepting new ones; close() stops both."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted = 0
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

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
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
