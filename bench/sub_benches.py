"""The non-HTTP scenarios, run by calling the project's existing benches and commands and parsing their output.

- bench/grpc_bench.py: GetUser and ValidateUser at N concurrent calls against the running service.
- bench/append_bench.py (`--json`): event append under N concurrent commands; "not run" while it is absent.
- bench/projections_bench.py: projection lag at a steady rate, rebuild and forwarder rates (own database).
- `pandora-users rebuild users`: the rebuild of the service's read model over the bulk-seeded users.

The two standalone benches create their own databases; they run with a PGAPPNAME of ours, so any database
they leave behind can be found (new since the start, seen with our application name) and dropped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_GRPC = re.compile(
    r"^(?P<name>\w+)\s+(?P<rps>[\d.]+) calls/s\s+p50\s+(?P<p50>[\d.]+) ms\s+p99\s+(?P<p99>[\d.]+) ms\s+"
    r"\((?P<calls>\d+) calls, (?P<errors>\d+) errors\)"
)
_GRPC_NONE = re.compile(r"^(?P<name>\w+)\s+no successful calls \((?P<errors>\d+) errors\)")
_SEEDED = re.compile(r"seeded (?P<events>\d+) events in (?P<seconds>[\d.]+) s")
_REBUILD = re.compile(r"rebuild (?P<name>\w+)\s+(?P<events>\d+) events\s+(?P<rate>[\d.]+) events/s")
_FORWARDER = re.compile(r"forwarder\s+(?P<events>\d+) events\s+(?P<rate>[\d.]+) events/s")
_LAG = re.compile(
    r"projection lag at (?P<rate>[\d.]+) events/s over (?P<events>\d+) events: "
    r"p50 (?P<p50>[\d.]+) ms\s+p99 (?P<p99>[\d.]+) ms"
)
_CLI_REBUILD = re.compile(
    r"^(?P<name>\w+): (?P<events>\d+) events in (?P<seconds>[\d.]+) s \((?P<rate>[\d.]+) events/s\)"
)


def _script(name: str, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def grpc(
    target: str, token: str, user_id: str, metrics: str, *, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    args = [target, token, user_id, "--metrics", metrics, "--concurrency", str(concurrency), "--seconds", str(seconds)]
    done = _script("grpc_bench.py", [*args, "--warmup", str(warmup)], dict(os.environ), 2 * (seconds + warmup) + 120)
    results: dict[str, Any] = {"returncode": done.returncode, "output": done.stdout.strip()}
    for line in done.stdout.splitlines():
        if m := _GRPC.match(line.strip()):
            results[m["name"]] = {
                "rps": float(m["rps"]),
                "p50_ms": float(m["p50"]),
                "p99_ms": float(m["p99"]),
                "calls": int(m["calls"]),
                "errors": int(m["errors"]),
            }
        elif m := _GRPC_NONE.match(line.strip()):
            results[m["name"]] = {"rps": 0.0, "errors": int(m["errors"])}
    if done.returncode != 0:
        results["error"] = done.stderr.strip()[-2000:]
    return results


class LeftoverDatabases:
    """Finds the databases a standalone bench created and left behind, by our PGAPPNAME."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.app_name = f"pandora-bench-{uuid.uuid4().hex[:8]}"
        self.seen: set[str] = set()
        self._before = self._databases()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _databases(self) -> set[str]:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}

    def _watch(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            while not self._stop.wait(0.5):
                rows = conn.execute(
                    "SELECT datname FROM pg_stat_activity WHERE application_name = %s", (self.app_name,)
                )
                self.seen.update(row[0] for row in rows if row[0])

    def __enter__(self) -> LeftoverDatabases:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        left = (self.seen & self._databases()) - self._before
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for name in sorted(n for n in left if n.startswith("pandora")):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _standalone(name: str, args: list[str], server_url: str, redis_url: str, timeout: float) -> Any:
    env = {**os.environ, "DATABASE_URL": server_url, "REDIS_URL": redis_url}
    with LeftoverDatabases(server_url) as tracker:
        env["PGAPPNAME"] = tracker.app_name
        return _script(name, args, env, timeout)


def append(server_url: str, redis_url: str, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """`append_bench.py --concurrency N --seconds S --json`: its JSON object, plus the fields we read from it."""
    if not (HERE / "append_bench.py").exists():
        return {"status": "not run", "reason": "bench/append_bench.py is not there yet"}
    args = ["--concurrency", str(concurrency), "--seconds", str(seconds), "--json"]
    started = time.perf_counter()
    done = _standalone("append_bench.py", args, server_url, redis_url, timeout=seconds * 3 + 300)
    if done.returncode != 0:
        return {"status": "failed", "reason": (done.stderr.strip() or done.stdout.strip())[-2000:]}
    raw = _last_json_object(done.stdout)
    if raw is None:
        return {"status": "failed", "reason": f"no JSON object in its output: {done.stdout.strip()[-500:]}"}
    modes = _append_modes(raw)
    if not modes:
        return {"status": "failed", "reason": f"no events/s in its JSON: {json.dumps(raw)[:300]}"}
    wall = time.perf_counter() - started
    return {"status": "ok", "concurrency": concurrency, "raw": raw, "wall_seconds": wall, "modes": modes}


def _last_json_object(text: str) -> dict[str, Any] | None:
    try:
        whole = json.loads(text)
        return whole if isinstance(whole, dict) else None
    except json.JSONDecodeError:
        pass
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _append_modes(raw: dict[str, Any], path: str = "") -> list[dict[str, Any]]:
    """Every measurement in append_bench's JSON (an object with `events_per_s`), named by where it sits:
    `on`/`off` (group commit) under a workload such as `appends` or `commands`."""
    if isinstance(raw.get("events_per_s"), int | float):
        on = raw.get("group_commit", path.rsplit("/", 1)[-1] == "on")
        return [
            {
                "label": path or "append",
                "group_commit": bool(on),
                "rps": float(raw["events_per_s"]),
                "p50_ms": raw.get("p50_ms"),
                "p99_ms": raw.get("p99_ms"),
                "errors": raw.get("errors"),
            }
        ]
    found: list[dict[str, Any]] = []
    for key, value in raw.items():
        if isinstance(value, dict):
            found += _append_modes(value, f"{path}/{key}" if path else str(key))
    return found


def read_side(server_url: str, redis_url: str, *, events: int, rate: float, seconds: float) -> dict[str, Any]:
    args = ["--events", str(events), "--rate", str(rate), "--seconds", str(seconds)]
    done = _standalone("projections_bench.py", args, server_url, redis_url, timeout=seconds + events / 100 + 600)
    out = done.stdout
    results: dict[str, Any] = {"returncode": done.returncode, "output": out.strip()}
    if m := _SEEDED.search(out):
        results["seed"] = {"events": int(m["events"]), "seconds": float(m["seconds"])}
    for m in _REBUILD.finditer(out):
        results[f"rebuild_{m['name']}"] = {"events": int(m["events"]), "rps": float(m["rate"])}
    if m := _FORWARDER.search(out):
        results["forwarder"] = {"events": int(m["events"]), "rps": float(m["rate"])}
    if m := _LAG.search(out):
        results["lag"] = {
            "rate": float(m["rate"]),
            "events": int(m["events"]),
            "p50_ms": float(m["p50"]),
            "p99_ms": float(m["p99"]),
        }
    if done.returncode != 0:
        results["error"] = done.stderr.strip()[-2000:]
    return results


def parse_cli_rebuild(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if m := _CLI_REBUILD.match(line.strip()):
            return {"events": int(m["events"]), "seconds": float(m["seconds"]), "rps": float(m["rate"])}
    return {}
