"""Prometheus metrics for GET /metrics, kept in the app's own registry (no process-global state), in
the text format written by prometheus_client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine import Engine


class EngineCollector:
    """The engine's own counts, read at scrape time."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        s = self.engine.stats
        for name, value, doc in (("numgpt_decode_steps", s.steps, "decode steps run (all slots at once)"),
                                 ("numgpt_prefills", s.prefills, "prompts prefilled into a slot"),
                                 ("numgpt_generated_tokens", s.tokens_generated, "tokens generated"),
                                 ("numgpt_prompt_tokens", s.prompt_tokens, "prompt tokens prefilled")):
            yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    """Request counts and latencies by route and status, time to first token, slot and queue use."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("numgpt_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("numgpt_request_seconds", "time from request to the end of the response",
                                 ["route"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.first_token = Histogram("numgpt_time_to_first_token_seconds", "time from submission to the first "
                                     "generated token", registry=self.registry,
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.rejected = Counter("numgpt_rejected_busy", "requests refused with 429 (slots and queue full)",
                                registry=self.registry)
        running = Gauge("numgpt_running_sequences", "sequences in a slot", registry=self.registry)
        running.set_function(lambda: engine.running)
        waiting = Gauge("numgpt_waiting_sequences", "sequences waiting for a slot", registry=self.registry)
        waiting.set_function(lambda: engine.waiting)
        slots = Gauge("numgpt_slots", "slots (--max-batch)", registry=self.registry)
        slots.set(engine.max_batch)
        self.registry.register(EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)
