"""The targets of issue #8 and the one table `just bench` prints: scenario, rate, p50, p99, errors, reference,
ratio to the reference, target, and pass/miss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MEMORY_LIMIT_MB = 400


@dataclass
class Row:
    scenario: str
    rate: str = "–"
    p50: str = "–"
    p99: str = "–"
    errors: str = "–"
    reference: str = "–"
    ratio: str = "–"
    target: str = "–"
    verdict: str = ""


def _rate(value: float | None, unit: str = "/s") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "MISS")


def http_errors(result: dict[str, Any]) -> str:
    parts = [f"{status}:{n}" for status, n in result.get("non_2xx", {}).items()]
    if result.get("socket_errors"):
        parts.append(f"socket:{result['socket_errors']}")
    return " ".join(parts) or "0"


def _http_row(name: str, r: dict[str, Any]) -> Row:
    return Row(name, _rate(r["rps"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]), http_errors(r))


def _against(row: Row, rate: float, ref_name: str, ref_rate: float | None) -> float | None:
    if not ref_rate:
        return None
    row.reference = f"{ref_name} {ref_rate:,.0f}/s"
    row.ratio = f"{rate / ref_rate:.2f}"
    return rate / ref_rate


def _mean(before: float | None, after: float | None) -> float | None:
    """A reference rate: the mean of its measurements before and after the service ran (either alone if the
    other is missing)."""
    rates = [rate for rate in (before, after) if rate]
    return sum(rates) / len(rates) if rates else None


def _not_run(name: str, info: dict[str, Any], target: str) -> Row:
    reason = str(info.get("reason") or info.get("error") or "failed").strip().splitlines() or ["failed"]
    return Row(name, rate=f"{info.get('status', 'not run')}", errors=reason[-1][:50], target=target, verdict="–")


def build_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    argon = res.get("argon2")
    bare = res.get("bare", {})
    for key, what in (("argon2", "Argon2id verify"), ("argon2_kept", "same, kept memory")):
        if r := res.get(key):
            rows.append(
                Row(
                    f"ref: {what}, {r['threads']} threads",
                    _rate(r["rps"]),
                    _ms(r["p50_ms"]),
                    _ms(r["p99_ms"]),
                    "0",
                    reference=f"one verify {r['one_verify_ms']:.1f} ms",
                )
            )
    if (r := res.get("argon2_after")) is not None:
        rows.append(
            Row("ref again after the service: verify", _rate(r["rps"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]), "0")
        )
    for server, r in bare.items():
        rows.append(_http_row(f"ref: bare Litestar, {server}", r))
    ref_server = res.get("bare_reference", "uvicorn")
    if (r := res.get("bare_after")) is not None:
        rows.append(_http_row(f"ref again after the service: {ref_server}", r))
    bare_rps = _mean(bare.get(ref_server, {}).get("rps"), (res.get("bare_after") or {}).get("rps"))
    verify_rps = _mean(argon and argon["rps"], (res.get("argon2_after") or {}).get("rps"))
    bare_name = f"bare/{ref_server}" + (" mean" if res.get("bare_after") else "")
    verify_name = "verify" + (" mean" if res.get("argon2_after") else "")
    for name in ("register", "login"):
        if (r := res.get(name)) is None:
            continue
        row = _http_row(f"POST /auth/{name} (c={r['connections']})", r)
        row.target = ">= 0.9 x verify, p99 <= 3 x verify"
        ratio = _against(row, r["rps"], verify_name, verify_rps)
        if ratio is not None and argon:
            row.verdict = _verdict(ratio >= 0.9 and r["p99_ms"] <= 3 * argon["one_verify_ms"])
        rows.append(row)
    if (r := res.get("overload")) is not None:
        login, health = r["login"], r["health"]
        row = _http_row(f"overload: login c={login['connections']}", login)
        only_busy = set(login["non_2xx"]) <= {"503", "429"} and not login["socket_errors"]
        row.reference = f"/health p99 {health['p99_ms']:.1f} ms"
        row.target = "only 503/429; /health p99 < 50 ms"
        row.verdict = _verdict(only_busy and health["p99_ms"] < 50 and not health["non_2xx"])
        rows.append(row)
    if (r := res.get("me")) is not None:
        row = _http_row(f"GET /users/me (c={r['connections']})", r)
        row.target = ">= 0.35 x bare"
        ratio = _against(row, r["rps"], bare_name, bare_rps)
        row.verdict = _verdict(None if ratio is None else ratio >= 0.35)
        rows.append(row)
    if (r := res.get("refresh")) is not None:
        row = _http_row(f"POST /auth/refresh (c={r['connections']})", r)
        row.target = ">= 500/s and >= 0.08 x bare"
        ratio = _against(row, r["rps"], bare_name, bare_rps)
        row.verdict = _verdict(r["rps"] >= 500 and (ratio is None or ratio >= 0.08))
        rows.append(row)
    for name in ("admin_list", "admin_search"):
        if (r := res.get(name)) is not None:
            label = "GET /admin/users" if name == "admin_list" else "GET /admin/users/search"
            rows.append(_http_row(f"{label} (c={r['connections']}, {res['bulk']['users']:,} users)", r))
    rows += _write_side_rows(res)
    rows += _memory_rows(res)
    return rows


def _write_side_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if (b := res.get("bulk")) is not None:
        rows.append(
            Row(
                f"seed {b['users']:,} users (bulk append)",
                _rate(b["events_per_second"], " ev/s"),
                reference=f"{b['seconds']:.1f} s",
            )
        )
        rows.append(
            Row(
                "projectors catch up on the seed",
                _rate(b["events"] / b["catch_up_seconds"], " ev/s"),
                reference=f"{b['catch_up_seconds']:.1f} s",
            )
        )
    if (g := res.get("grpc")) is not None:
        for rpc, target in (("GetUser", 2000.0), ("ValidateUser", None)):
            if (r := g.get(rpc)) is None:
                rows.append(_not_run(f"gRPC {rpc} (32 concurrent)", {"status": "failed", **g}, ">= 2,000/s"))
                continue
            row = Row(
                f"gRPC {rpc} ({g['concurrency']} concurrent)",
                _rate(r["rps"]),
                _ms(r.get("p50_ms")),
                _ms(r.get("p99_ms")),
                str(r["errors"]),
            )
            if target is not None:
                row.target, row.verdict = ">= 2,000/s", _verdict(r["rps"] >= target and r["errors"] == 0)
            rows.append(row)
    if (r := res.get("rebuild")) is not None:
        row = Row("rebuild users (pandora-users rebuild)", _rate(r.get("rps"), " ev/s"), target=">= 5,000 ev/s")
        row.reference = f"{r.get('events', 0):,} events in {r.get('wall_seconds', 0):.1f} s"
        row.verdict = _verdict(r.get("rps", 0) >= 5000)
        rows.append(row)
    if (a := res.get("append")) is not None:
        rows += _append_rows(a)
    if (p := res.get("read_side")) is not None:
        rows += _read_side_rows(p)
    return rows


def _append_rows(a: dict[str, Any]) -> list[Row]:
    """One row per append_bench measurement; the target applies with group commit on (how the service runs)."""
    if a.get("status") != "ok":
        return [_not_run("event append (32 concurrent)", a, ">= 2,000 ev/s")]
    rows = []
    for mode in a["modes"]:
        errors = "–" if mode.get("errors") is None else str(mode["errors"])
        *workload, last = mode["label"].split("/")
        label = f"{'/'.join(workload) or 'append'}, group commit {last}" if last in ("on", "off") else mode["label"]
        row = Row(
            f"event append: {label} (c={a.get('concurrency', 32)})",
            _rate(mode["rps"], " ev/s"),
            _ms(mode["p50_ms"]),
            _ms(mode["p99_ms"]),
            errors,
        )
        if mode["group_commit"]:
            row.target, row.verdict = ">= 2,000 ev/s", _verdict(mode["rps"] >= 2000)
        else:
            row.reference = "group commit off"
        rows.append(row)
    return rows


def _read_side_rows(p: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if (lag := p.get("lag")) is None:
        rows.append(_not_run("projection lag at 100 ev/s", {"status": "failed", **p}, "p99 < 50 ms"))
    else:
        rows.append(
            Row(
                f"projection lag at {lag['rate']:.0f} ev/s",
                f"{lag['events']:,} events",
                _ms(lag["p50_ms"]),
                _ms(lag["p99_ms"]),
                target="p99 < 50 ms",
                verdict=_verdict(lag["p99_ms"] < 50),
            )
        )
    for name in ("users", "event_log"):
        if (r := p.get(f"rebuild_{name}")) is not None:
            rows.append(
                Row(
                    f"rebuild {name} (projections_bench)",
                    _rate(r["rps"], " ev/s"),
                    reference=f"{r['events']:,} events",
                    target=">= 5,000 ev/s",
                    verdict=_verdict(r["rps"] >= 5000),
                )
            )
    if (r := p.get("forwarder")) is not None:
        rows.append(
            Row(
                "forwarder to Redis Streams",
                _rate(r["rps"], " ev/s"),
                reference=f"{r['events']:,} events",
                target=">= 10,000 ev/s",
                verdict=_verdict(r["rps"] >= 10000),
            )
        )
    return rows


def _memory_rows(res: dict[str, Any]) -> list[Row]:
    rows = []
    for n, proc in enumerate(res.get("memory", [])):
        peak = proc.get("VmHWM")
        label = "serve process" if n == 0 else f"worker process {n} (pid {proc['pid']})"
        ok = None if peak is None else peak < MEMORY_LIMIT_MB
        rows.append(
            Row(
                f"peak RSS: {label}",
                "–" if peak is None else f"{peak:.0f} MB",
                target=f"< {MEMORY_LIMIT_MB} MB",
                verdict=_verdict(ok),
            )
        )
    return rows


HEADERS = ("scenario", "req/s | ev/s", "p50", "p99", "errors", "reference", "ratio", "target", "")


def render(rows: list[Row]) -> str:
    table = [
        HEADERS,
        *((r.scenario, r.rate, r.p50, r.p99, r.errors, r.reference, r.ratio, r.target, r.verdict) for r in rows),
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)
