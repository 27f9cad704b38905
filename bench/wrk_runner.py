"""Run one wrk scenario (a script of bench/wrk/) and turn its `BENCH_JSON` line into a result dict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parent / "wrk"


@dataclass
class Load:
    """One wrk invocation: script, target, connections, duration and the script's environment."""

    script: str
    url: str
    connections: int
    seconds: float
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0

    def command(self, seconds: float | None = None) -> list[str]:
        return [
            "wrk",
            "-t1",
            f"-c{self.connections}",
            f"-d{max(1, round(seconds if seconds is not None else self.seconds))}s",
            f"--timeout={round(self.timeout)}s",
            "--latency",
            "-s",
            str(LUA / self.script),
            self.url,
        ]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def start(load: Load, seconds: float | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "WRK_THREADS": "1", **load.env}
    return subprocess.Popen(load.command(seconds), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], load: Load) -> dict[str, Any]:
    """Wait for a started wrk and parse its result (raises RuntimeError when wrk failed)."""
    out, err = proc.communicate(timeout=load.seconds + load.timeout + 60)
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk {load.script} failed ({proc.returncode}): {err.strip() or out.strip()}"[:2000])
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    starved = next((x for x in out.splitlines() if x.startswith("BENCH_STARVED ")), None)
    if starved is not None:
        result["starved_requests"] = int(starved.split()[1])
    return summarize(result, load)


def run(load: Load, warmup: float = 0.0, settle: float = 0.0) -> dict[str, Any]:
    """An optional warm-up run (discarded), `settle` seconds for the requests it left in flight, the measured run."""
    if warmup > 0:
        finish(start(load, warmup), load)
        time.sleep(settle)
    return finish(start(load), load)


def summarize(raw: dict[str, Any], load: Load) -> dict[str, Any]:
    """Add successes per second and split the errors: non-2xx responses by status, socket errors by kind."""
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    seconds = raw["duration_s"] or load.seconds
    errors = raw["errors"]
    return {
        **raw,
        "connections": load.connections,
        "ok": ok,
        "rps": ok / seconds,
        "all_rps": raw["requests"] / seconds,
        "non_2xx": {str(s): n for s, n in sorted(statuses.items()) if not 200 <= s < 300},
        "socket_errors": sum(errors[k] for k in ("connect", "read", "write", "timeout")),
    }
