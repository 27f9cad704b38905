"""Run the real `pandora-users` process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

EXE = str(Path(sys.executable).with_name("pandora-users"))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: each socket stays bound until all are chosen (one after another, the kernel may
    hand out a just-released port again)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def health_check(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """grpc.health.v1 `Check` through the official grpcio client."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment minus every setting of the service, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DB_", "REDIS_", "APP_", "JWT_"))}
    env.update(overrides)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


class Service:
    """`pandora-users serve` as a child process, stopped with SIGINT like a Ctrl-C."""

    def __init__(self, env: dict[str, str], cwd: Path, port: int, command: str = "serve") -> None:
        self.port = port
        self.log = cwd / f"serve-{port}.log"
        self._out = self.log.open("w")
        self.admin_port, self.grpc_port = [p for p in free_ports(3) if p != port][:2]  # none is the public port
        env = {**env, "SERVER_PORT": str(port), "ADMIN_PORT": str(self.admin_port), "GRPC_PORT": str(self.grpc_port)}
        self.proc = subprocess.Popen([EXE, command], env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 60) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                response = httpx.get(f"{self.url}/ready", timeout=2)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {timeout} s:\n{self.log.read_text()}")

    def wait_grpc_serving(self, timeout: float = 60) -> None:
        """Until grpc.health.v1 says SERVING (a process without HTTP: the `rpc` role)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with grpc.insecure_channel(self.grpc_target) as channel:
                try:
                    if health_check(channel)(HealthCheckRequest(), timeout=2).status == HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"not serving within {timeout} s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode
