"""gRPC load benchmark (not a test): GetUser and ValidateUser calls/s and p50/p99 latency at N concurrent calls.

Usage (against a running service; the user must exist):

    .venv/bin/python bench/grpc_bench.py 127.0.0.1:9090 <service token> <user id> \\
        [--metrics http://127.0.0.1:8081/metrics] [--concurrency 32] [--connections 8] [--seconds 10] \\
        [--client h2load|grpcio]

The load comes from h2load (Debian's nghttp2-client, C), the HTTP/2 counterpart of wrk: `concurrency` calls
always in flight over `connections` HTTP/2 connections (internal callers run several instances, and each
connection lands on one worker process). h2load sees HTTP statuses only, and a failed gRPC call is an HTTP 200
with a non-zero `grpc-status` trailer, so the errors are read from the service itself: its
`grpc_requests_total` counters on `--metrics`, before and after, every status but OK (the calls that h2load
cuts off when its time is up are CANCELLED and counted apart). One call with the official grpcio client first
checks the target, token and user (and that a real gRPC client gets a real answer).

`--client grpcio` drives the load with the grpcio asyncio client over one channel instead: every call lands on one
worker process, and the Python client's own CPU per call comes out of the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from rpc.gen import user_pb2 as pb
from rpc.gen.user_pb2_grpc import UserServiceStub

Call = Callable[[], Awaitable[object]]
SERVICE = "pandora.user.v1.UserService"
_COUNTER = re.compile(r'^pandora_user_service_grpc_requests_total\{method="([^"]+)",status="(\w+)"\} ([\d.e+]+)$')
_FINISHED = re.compile(r"finished in [\d.]+s, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored")


def grpc_statuses(metrics_url: str) -> Counter[tuple[str, str]]:
    """(RPC, status) -> calls so far, summed over every process, from the service's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 - a URL the caller gave
        text = response.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        if m := _COUNTER.match(line):
            counts[(m[1].rsplit("/", 1)[-1], m[2])] += round(float(m[3]))
    return counts


def framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(
    target: str, token: str, rpc: str, body: bytes, *, concurrency: int, connections: int, seconds: float, warmup: float
) -> dict[str, float | int]:
    """Run h2load on one RPC; its rate, latency percentiles (from its per-request log) and HTTP-level failures."""
    streams = max(1, concurrency // connections)
    with tempfile.TemporaryDirectory(prefix="grpc-bench-") as scratch:
        data, log = Path(scratch) / "request.bin", Path(scratch) / "requests.tsv"
        data.write_bytes(body)
        command = [
            "h2load", f"-c{connections}", f"-m{streams}", f"-D{max(1, round(seconds))}",
            f"--warm-up-time={max(1, round(warmup))}", f"--log-file={log}", f"-d{data}",
            "-Hcontent-type: application/grpc", "-Hte: trailers", f"-Hauthorization: Bearer {token}",
            f"http://{target}/{SERVICE}/{rpc}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False)
        rate, counts = _FINISHED.search(done.stdout), _REQUESTS.search(done.stdout)
        if done.returncode != 0 or rate is None or counts is None:
            raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        # One line per request of the measured window: start (µs since the epoch), HTTP status, duration (µs).
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    latencies = [int(row[2]) / 1e6 for row in rows if row[1] == "200"]
    total, finished, succeeded, failed, errored = (int(x) for x in counts.groups())
    unanswered = sum(int(row[1]) <= 0 for row in rows)  # no status at all: still in flight when h2load stopped
    return {
        "rps": float(rate[1]),
        "latencies": latencies,  # type: ignore[dict-item]
        "http_failures": failed + errored,
        "non_200": sum(row[1] != "200" for row in rows) - unanswered,
        "unfinished": total - finished + unanswered,
        "succeeded": succeeded,
    }


async def grpcio_load(call: Call, *, concurrency: int, seconds: float, warmup: float) -> tuple[int, list[float], int]:
    """(calls completed in the measured window, their latencies in seconds, errors) with the grpcio client."""
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


def report(name: str, rate: float, latencies: list[float], errors: int, note: str = "") -> None:
    if not latencies:
        print(f"{name:<13} no successful calls ({errors} errors)")
        return
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    print(
        f"{name:<13} {rate:8.0f} calls/s   p50 {cuts[49] * 1000:6.2f} ms   "
        f"p99 {cuts[98] * 1000:6.2f} ms   ({len(latencies)} calls, {errors} errors){note}"
    )


async def check(target: str, metadata: tuple[tuple[str, str], ...], requests: dict[str, object]) -> None:
    """Every RPC answers one grpcio call (fails fast on a wrong target, token or user)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = UserServiceStub(channel)  # type: ignore[no-untyped-call]
        for rpc, request in requests.items():
            await getattr(stub, rpc)(request, metadata=metadata, timeout=5)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="host:port of the gRPC listener")
    parser.add_argument("token", help="a service token of SERVICE_TOKENS allowed to call GetUser and ValidateUser")
    parser.add_argument("user_id", help="the id of an existing, live user")
    parser.add_argument("--metrics", help="the service's /metrics URL (h2load: where the gRPC errors are counted)")
    parser.add_argument("--client", choices=("h2load", "grpcio"), default="h2load")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=8, help="h2load: HTTP/2 connections carrying them")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per RPC")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.client == "h2load" and (shutil.which("h2load") is None or not args.metrics):
        parser.error("--client h2load needs h2load on PATH (apt-get install nghttp2-client) and --metrics")
    metadata = (("authorization", f"Bearer {args.token}"),)
    requests: dict[str, object] = {
        "GetUser": pb.GetUserRequest(user_id=args.user_id),
        "ValidateUser": pb.ValidateUserRequest(user_id=args.user_id),
    }
    await check(args.target, metadata, requests)
    if args.client == "grpcio":
        print(f"{args.target}: grpcio, one channel, {args.concurrency} concurrent calls, {args.seconds:g} s per RPC")
        async with grpc.aio.insecure_channel(args.target) as channel:
            stub = UserServiceStub(channel)  # type: ignore[no-untyped-call]
            for rpc, request in requests.items():
                method = getattr(stub, rpc)
                count, latencies, errors = await grpcio_load(
                    lambda m=method, r=request: m(r, metadata=metadata, timeout=5),
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    warmup=args.warmup,
                )
                report(rpc, count / args.seconds, latencies, errors)
        return 0
    print(
        f"{args.target}: h2load, {args.concurrency} concurrent calls over {args.connections} connections, "
        f"{args.seconds:g} s per RPC"
    )
    for rpc, request in requests.items():
        before = grpc_statuses(args.metrics)
        result = h2load(
            args.target,
            args.token,
            rpc,
            framed(request.SerializeToString()),  # type: ignore[attr-defined]
            concurrency=args.concurrency,
            connections=args.connections,
            seconds=args.seconds,
            warmup=args.warmup,
        )
        after = grpc_statuses(args.metrics)
        statuses = {status: after[key] - before[key] for key in after if key[0] == rpc and (status := key[1]) != "OK"}
        cut_off = max(statuses.pop("CANCELLED", 0), int(result["unfinished"]))
        errors = sum(statuses.values()) + int(result["http_failures"]) + int(result["non_200"])
        detail = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()) if n)
        note = f"  [{detail}]" if detail else ""
        note += f"  {cut_off} cut off at the end" if cut_off else ""
        report(rpc, float(result["rps"]), result["latencies"], errors, note)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
