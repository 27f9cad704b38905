"""Swagger UI renders in headless Chromium from the service alone, with every other host unreachable (SPEC §3.4).

Chromium resolves no host but 127.0.0.1, and its network log shows every request the page made, so the test
proves both that the UI works offline and that it loads nothing from elsewhere (no CDN).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Api

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's `chromium`)")
# The operation the page opens through its deep link, and whose documented responses must be shown.
OPEN_TAG, OPEN_OPERATION = "authentication", "ApiV1AuthLoginLogin"


def chromium(url: str, workdir: Path, *flags: str) -> str:
    """The DOM after the page has run, from a headless Chromium that can reach 127.0.0.1 only."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000",
        *flags,
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def page_requests(netlog: Path, origin: str) -> list[str]:
    """The URLs of every request the page itself started (the browser's own background requests are not)."""
    log: dict[str, Any] = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        page = params.get("initiator") == origin or params.get("url", "").startswith(f"{origin}/swagger")
        if event["type"] == start and page:
            urls.append(params["url"])
    return urls


def test_swagger_ui_renders_every_operation_with_nothing_but_the_service(api: Api, tmp_path: Path) -> None:
    page = httpx.get(f"{api.url}/swagger")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    references = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert references and all(ref.startswith("/swagger/") for ref in references), references
    assert "<script>" not in page.text  # no inline script: the CSP allows 'self' only

    netlog = tmp_path / "netlog.json"
    dom = chromium(f"{api.url}/swagger#/{OPEN_TAG}/{OPEN_OPERATION}", tmp_path, f"--log-net-log={netlog}")

    document = httpx.get(f"{api.url}/openapi.json").json()
    operations = [
        (op["tags"][0], op["operationId"], method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]
    assert len(operations) >= 17
    for tag, operation_id, method, path, _ in operations:
        assert f'id="operations-{tag.replace(" ", "_")}-{operation_id}"' in dom, (method, path)
        assert f'data-path="{path}"' in dom
    for path in ("/api/v1/auth/login", "/api/v1/users/me"):
        assert re.search(rf'class="opblock-summary-path" data-path="{re.escape(path)}"', dom)
    assert dom.count('class="opblock-summary-method"') == len(operations)
    assert "Authorize" in dom  # the bearerAuth scheme

    # The deep-linked operation is open and lists every documented response, errors included.
    login = next(op for tag, op_id, _, _, op in operations if op_id == OPEN_OPERATION)
    shown = set(re.findall(r'class="response " data-code="(\d{3})"', dom))
    assert shown == set(login["responses"]), shown
    assert "account_locked" in dom and "invalid_credentials" in dom

    origin = api.url
    requested = page_requests(netlog, origin)
    assert all(url.startswith(f"{origin}/") for url in requested), requested
    wanted = {"/swagger", "/swagger/swagger-ui.css", "/swagger/swagger-ui-bundle.js", "/openapi.json"}
    assert wanted <= {url.removeprefix(origin).split("#")[0] for url in requested}, requested
