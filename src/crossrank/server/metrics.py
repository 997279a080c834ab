"""Prometheus metrics on a registry owned by one app instance (several apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crossrank.model.score_cache import CacheStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """Request counts and latency per route, batch sizes, queue depth, tokens and failed batches."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("crossrank_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("crossrank_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("crossrank_batch_requests", "Requests merged into one scoring batch",
                                        buckets=SIZE_BUCKETS, registry=self.registry)
        self.batch_pairs = Histogram("crossrank_batch_pairs", "Pairs in one scoring batch", buckets=SIZE_BUCKETS,
                                     registry=self.registry)
        self.queue_pairs = Gauge("crossrank_queue_pairs", "Pairs waiting for a batch", registry=self.registry)
        self.tokens = Counter("crossrank_tokens", "Input tokens scored", registry=self.registry)
        self.batch_failures = Counter("crossrank_batch_failures", "Scoring batches that raised",
                                      registry=self.registry)
        self.rejected = Counter("crossrank_rejected", "Requests refused by limits, overload or timeout", ["reason"],
                                registry=self.registry)

    def watch_caches(self, stats: Callable[[], Mapping[str, CacheStats]]) -> None:
        """Export the model's caches (entries, hits, misses per cache name), read at each scrape."""
        self.registry.register(CacheCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


CACHE_HELP = {
    "score": ("Scored pairs held for exact repeats", "Pairs answered from the score cache",
              "Pairs the model scored (not in the cache)"),
    "segment": ("Encoded segments held for documents that recur", "Segments answered from the segment cache",
                "Segments the model encoded (not in the cache)"),
}


class CacheCollector(Collector):
    """crossrank_{score,segment}_cache_{entries,hits_total,misses_total}: the hit rate is hits / (hits + misses)."""

    def __init__(self, stats: Callable[[], Mapping[str, CacheStats]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, stats in self.stats().items():
            entries, hits, misses = CACHE_HELP[name]
            yield GaugeMetricFamily(f"crossrank_{name}_cache_entries", entries, value=stats.entries)
            yield CounterMetricFamily(f"crossrank_{name}_cache_hits", hits, value=stats.hits)
            yield CounterMetricFamily(f"crossrank_{name}_cache_misses", misses, value=stats.misses)
