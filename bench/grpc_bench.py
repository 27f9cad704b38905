"""gRPC load benchmark (not a test): GetUser and ValidateUser calls/s and p50/p99 latency at N concurrent calls.

Usage (against a running service; the user must exist):

    .venv/bin/python bench/grpc_bench.py 127.0.0.1:9090 <service token> <user id> [--concurrency 32] [--seconds 10]

It uses the official grpcio client (asyncio API) over one channel, with `concurrency` calls always in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import grpc

from rpc.gen import user_pb2 as pb
from rpc.gen.user_pb2_grpc import UserServiceStub

Call = Callable[[], Awaitable[object]]


async def run(call: Call, *, concurrency: int, seconds: float, warmup: float) -> tuple[int, list[float], int]:
    """(calls completed in the measured window, their latencies in seconds, errors)."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def worker() -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies, errors


def report(name: str, count: int, latencies: list[float], errors: int, seconds: float) -> None:
    if not latencies:
        print(f"{name:<13} no successful calls ({errors} errors)")
        return
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"{name:<13} {count / seconds:8.0f} calls/s   p50 {cuts[49] * 1000:6.2f} ms   "
        f"p99 {cuts[98] * 1000:6.2f} ms   ({count} calls, {errors} errors)"
    )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="host:port of the gRPC listener")
    parser.add_argument("token", help="a service token of SERVICE_TOKENS allowed to call GetUser and ValidateUser")
    parser.add_argument("user_id", help="the id of an existing, live user")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per RPC")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    metadata = (("authorization", f"Bearer {args.token}"),)
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = UserServiceStub(channel)  # type: ignore[no-untyped-call]
        get = pb.GetUserRequest(user_id=args.user_id)
        validate = pb.ValidateUserRequest(user_id=args.user_id)
        await stub.GetUser(get, metadata=metadata, timeout=5)  # fails fast on a wrong target, token or user
        calls: dict[str, Call] = {
            "GetUser": lambda: stub.GetUser(get, metadata=metadata, timeout=5),
            "ValidateUser": lambda: stub.ValidateUser(validate, metadata=metadata, timeout=5),
        }
        print(f"{args.target}: {args.concurrency} concurrent calls, {args.seconds:g} s per RPC")
        for name, call in calls.items():
            count, latencies, errors = await run(
                call, concurrency=args.concurrency, seconds=args.seconds, warmup=args.warmup
            )
            report(name, count, latencies, errors, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
