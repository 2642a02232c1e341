"""What ``tapdiff serve`` tells an operator at ``GET /metrics``, in Prometheus' text format (prometheus-client,
part of the serve extra): requests by status, clips generated, clips queued, clips per sampler batch, seconds
per score evaluation and per request, each labelled with the model and backend. One registry per app, so
several apps in one process (tests) do not share counts."""
from __future__ import annotations

from .errors import MissingDependency

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SECONDS_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300)


class ServiceMetrics:
    def __init__(self, model: str, backend: str, replica: str | None = None):
        """``replica``: the Ray Serve replica these metrics are of (a ``replica`` label on every series)."""
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as e:
            raise MissingDependency("tapdiff serve's metrics need prometheus-client: pip install 'tapdiff[serve]'") from e
        self.registry = CollectorRegistry()
        names, values = ("model", "backend"), (model, backend)
        if replica is not None:
            names, values = (*names, "replica"), (*values, replica)
        kw = {"registry": self.registry}
        self.requests = Counter("tapdiff_requests", "HTTP requests answered, by status", ("status", *names), **kw)
        self.clips = Counter("tapdiff_clips_generated", "clips through the sampler", names, **kw).labels(*values)
        self.queued = Gauge("tapdiff_queued_clips", "clips waiting or running", names, **kw).labels(*values)
        self.batch = Histogram("tapdiff_batch_clips", "clips per sampler batch", names, buckets=BATCH_BUCKETS,
                               **kw).labels(*values)
        self.evaluation = Histogram("tapdiff_score_evaluation_seconds", "seconds per score evaluation of a batch",
                                    names, buckets=SECONDS_BUCKETS, **kw).labels(*values)
        self.request_seconds = Histogram("tapdiff_request_seconds", "seconds from a generate request to its answer",
                                         names, buckets=SECONDS_BUCKETS, **kw).labels(*values)
        self._values = values

    def on_batch(self, clips: int, seconds: float, spec) -> None:
        """``Batcher``'s hook: one sampled batch of ``clips`` that took ``seconds`` under ``spec``."""
        self.clips.inc(clips)
        self.batch.observe(clips)
        self.evaluation.observe(seconds / max(spec.nfe, 1))

    def answered(self, status: int, seconds: float | None = None) -> None:
        self.requests.labels(str(status), *self._values).inc()
        if seconds is not None:
            self.request_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
