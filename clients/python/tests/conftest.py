"""Starts real seaportd processes (the built binary) for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def binary(name: str) -> str:
    env = {"seaportd": "SEAPORTD", "seaportctl": "SEAPORTCTL"}[name]
    return os.environ.get(env, str(ROOT / "target" / "debug" / name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Seaportd:
    """A seaportd child process on 127.0.0.1:port."""

    def __init__(self, port: int, *flags: str):
        self.port, self.flags = port, flags
        self.address = f"127.0.0.1:{port}"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [binary("seaportd"), "--listen", self.address, "--drain-delay", "0s", "--log", "warn", *self.flags]
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
