"""The async metrics logger: the trainer's metrics go to MLflow in batches from a background
thread, and wait in a buffer while the tracking server is unreachable."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ftmagic.errors import RunError
from ftmagic.tracking.client import client

if TYPE_CHECKING:
    from mlflow.entities import Metric

log = logging.getLogger(__name__)

MAX_BATCH_METRICS = 1000  # MLflow's limit on metrics in one log_batch call


class MetricsLogger:
    """Logs metrics from a background thread in batches, so training never waits on MLflow.

    When the tracking server is unreachable, metrics stay buffered and are retried with backoff
    until they are accepted; ``close()`` waits (bounded) for the buffer to drain.
    """

    def __init__(
        self,
        run_id: str,
        *,
        flush_interval: float = 1.0,
        uri: str | None = None,
        max_backoff: float = 4.0,
    ) -> None:
        self.run_id = run_id
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.sent = 0
        self.failures = 0
        self._client = client(uri)
        self._pending: list[Metric] = []
        self._in_flight = 0
        self._wake = threading.Condition()
        self._flush_requested = False
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"ftmagic-metrics-{run_id[:8]}", daemon=True
        )
        self._thread.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Queue ``values`` for ``step``; returns at once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value in values.items()]
        with self._wake:
            if self._closing:
                raise RunError(f"metrics logger of run {self.run_id} is closed")
            self._pending.extend(metrics)
            if len(self._pending) >= MAX_BATCH_METRICS:
                self._wake.notify_all()

    @property
    def buffered(self) -> int:
        """Metrics not yet accepted by MLflow."""
        with self._wake:
            return len(self._pending) + self._in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every metric logged so far is stored; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            self._flush_requested = True
            self._wake.notify_all()
            while self._pending or self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wake.wait(left if left is None else min(left, 0.5))
        return True

    def close(self, timeout: float = 60.0) -> bool:
        """Flush (waiting at most ``timeout`` seconds) and stop the thread."""
        done = self.flush(timeout)
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout=5.0)
        if not done:
            log.warning(
                "run %s: %d metrics could not be sent to MLflow", self.run_id, self.buffered
            )
        return done

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._wake:
                idle = not self._flush_requested and len(self._pending) < MAX_BATCH_METRICS
                if idle and not self._closing:
                    self._wake.wait(self.flush_interval)  # gather a batch
                if self._closing:
                    return  # close() already waited for the buffer to drain
                batch = self._pending[:MAX_BATCH_METRICS]
                del self._pending[: len(batch)]
                self._in_flight = len(batch)
                if not self._pending:
                    self._flush_requested = False
            if not batch:
                continue
            if self._send(batch):
                backoff = 0.5
                continue
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _send(self, batch: list[Metric]) -> bool:
        try:
            self._client.log_batch(self.run_id, metrics=batch, synchronous=True)
        except Exception as err:  # the server may be down for a while: keep and retry
            self.failures += 1
            log.info("run %s: metrics not sent yet (%s); will retry", self.run_id, err)
            with self._wake:
                self._pending[:0] = batch
                self._in_flight = 0
                self._wake.notify_all()
            return False
        with self._wake:
            self.sent += len(batch)
            self._in_flight = 0
            self._wake.notify_all()
        return True

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
