"""One bench run's state: its options, results and scratch directory, and steps that record a failure
instead of ending the run."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def say(text: str) -> None:
    print(text, flush=True)


class Bench:
    """One run: its settings, results and scratch directory; each step records a result or a failure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(tempfile.mkdtemp(prefix="pandora-bench-"))
        self.results: dict[str, Any] = {"failed": {}, "bare": {}, "bare_reference": args.bare_reference}
        self.started = time.perf_counter()

    def wants(self, name: str) -> bool:
        return name in self.args.only

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one step; a dict result gets the 1-minute load average after it (the machine is shared)."""
        say(f"[{time.perf_counter() - self.started:6.0f} s] {name} (load {os.getloadavg()[0]:.1f}) ...")
        try:
            result = fn()
            if isinstance(result, dict):
                result["loadavg_after"] = round(os.getloadavg()[0], 2)
            return result
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not end the run
            self.results["failed"][name] = f"{type(exc).__name__}: {exc}"[:500]
            say(f"  FAILED: {exc}".rstrip()[:1500])
            traceback.print_exc(limit=3, file=sys.stderr)
            return None
