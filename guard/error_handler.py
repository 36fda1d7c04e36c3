"""Catch, count, report: what the guard does with an exception instead of raising it into the engine.

Every exception inside the guard (or in an adapter's glue, via ``Guard.record_error``) is counted in
``axisguard_errors_total{stage}``, logged once per (stage, exception type) so a persistent fault does
not flood the log, and applied to the step's requests per the policy's ``on_error``: ``fail_open``
lets them continue unguarded, ``fail_closed`` marks them to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from guard.metrics import GuardMetrics
from guard.request_table import RequestState

log = logging.getLogger("guard.runtime")  # the facade's logger: operators filter on one name


class ErrorHandler:
    def __init__(self, metrics: GuardMetrics | None) -> None:
        self.metrics = metrics
        self._logged: set[tuple[str, str]] = set()

    def handle(self, stage: str, exc: BaseException, requests: Iterable[RequestState], on_error: str) -> None:
        """Count and log ``exc`` raised in ``stage``, then apply ``on_error`` (the policy's, read at each
        error: a reloaded policy applies at once) to ``requests``. The guard calls this inside its own
        catch-all, so a failure here never reaches the engine."""
        if self.metrics is not None:
            self.metrics.inc_error(stage)
        kind = (stage, type(exc).__name__)
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("axisguard: %s error in stage %r (%s); the step's requests %s; further %s errors "
                        "in this stage are counted, not logged", type(exc).__name__, stage, exc,
                        "will stop (fail_closed)" if on_error == "fail_closed" else "continue unguarded",
                        type(exc).__name__, exc_info=exc)
        for req in requests:
            req.errors += 1
            if on_error == "fail_closed":
                req.stopped = req.error_stop = True
