"""The Prometheus multiprocess directory that puts the worker's ``axisguard_`` metrics on vLLM's ``/metrics``.

The guard's metrics are written in the worker process; vLLM's API server serves ``/metrics`` from a
``MultiProcessCollector`` over ``PROMETHEUS_MULTIPROC_DIR`` when that variable is set before any
process imports ``prometheus_client``. ``axisguard serve`` therefore sets it before it execs the
server. Counter files survive a restart and would be summed with the new process's counters
(totals doubled), so the directory is emptied at every start; a stable per-port location keeps old
runs from piling up in temp space.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_dir(home: Path, port: int | str) -> Path:
    return home / "run" / f"prometheus-{port}"


def prepare(path: Path) -> Path:
    """Create ``path`` if needed and delete the metric files a previous run left in it."""
    path.mkdir(parents=True, exist_ok=True)
    stale = sorted(path.glob("*.db"))
    for file in stale:
        file.unlink()
    if stale:
        log.info("axisguard: removed %d stale Prometheus files from %s (a previous run's counters)", len(stale), path)
    return path
