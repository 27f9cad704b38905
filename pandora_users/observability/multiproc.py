"""One metrics directory per run, shared by a process and its HTTP workers, so their counts add up.

prometheus-client chooses between in-memory and file-backed values when it is first imported, from
PROMETHEUS_MULTIPROC_DIR; so `ensure_shared_dir` runs before anything imports it. An operator's own directory is
used as given (and is theirs to empty between runs); otherwise a fresh one is made and removed at exit. Children
inherit the variable through the environment.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


def ensure_shared_dir() -> str:
    """The directory in use, made now (and removed at exit) when none is configured."""
    configured = os.environ.get(ENV)
    if configured:
        return configured
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics directory was chosen")
    path = tempfile.mkdtemp(prefix="pandora-users-metrics-")
    os.environ[ENV] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path
