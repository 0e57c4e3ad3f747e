"""What ``GET /metrics`` shows, in the Prometheus text format (one registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Requests, errors, latency, time to first token, tokens, batches, queue, feedback and the version served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmpo_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.errors = Counter("lmpo_request_errors", "Requests answered with an error, by route and error type",
                              ["route", "type"], registry=r)
        self.latency = Histogram("lmpo_request_latency_seconds", "Chat completion time, request to last byte",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("lmpo_time_to_first_token_seconds", "Streamed completion time to the first reply text",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("lmpo_generated_tokens", "Tokens generated (tool calls included)", registry=r)
        self.batch = Histogram("lmpo_batch_size", "Choices decoded together, observed at every decoding step",
                               buckets=BATCH_BUCKETS, registry=r)
        self.queue = Gauge("lmpo_queue_length", "Choices waiting for a batch", registry=r)
        self.feedback = Counter("lmpo_feedback", "Ratings received, by kind (up, down, score)", ["kind"], registry=r)
        self.completions = Counter("lmpo_completions", "Completions recorded in the feedback store", registry=r)
        self.model = Info("lmpo_model", "The model served and its version (checkpoint)", registry=r)
        self.reloads = Counter("lmpo_model_reloads", "Newer checkpoints loaded while serving", registry=r)

    def serving(self, name: str, version: str) -> None:
        """Name the model and version now served."""
        self.model.info({"name": name, "version": version})
