"""The gRPC listener (grpclib): `grpc.health.v1` now; the UserService is added beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.server import Server


@dataclass
class RpcServer:
    server: Server
    status: ServiceStatus

    async def close(self) -> None:
        """Report NOT_SERVING first (SPEC §5.2), then stop accepting and let calls finish."""
        self.status.set(False)
        self.server.close()
        await self.server.wait_closed()


async def start_rpc(runtime: Any, host: str, port: int) -> RpcServer:
    status = ServiceStatus()
    status.set(True)
    health = Health({OVERALL: [status]})
    server = Server([health])
    await server.start(host, port)
    return RpcServer(server, status)
