"""Prometheus metrics, one registry per app (two apps in one process never collide)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from clients.protocol import JobStatus

JOB_STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
INTERVAL_BUCKETS = (0.005, 0.01, 0.02, 0.033, 0.05, 0.0625, 0.1, 0.2, 0.5, 1.0, 2.0)


class _JobCounts:
    """Job counts by status, read from the job store at scrape time (shared across replicas)."""

    def __init__(self, counts: Callable[[], dict[str, int]]):
        self._counts = counts

    def collect(self):
        family = GaugeMetricFamily("framecast_jobs", "Video jobs in the job store by status", labels=["status"])
        try:
            counts = self._counts()
        except Exception:  # a store that is down must not break /metrics
            counts = {}
        for status in JOB_STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_frame = Histogram(
            "framecast_time_to_first_frame_seconds", "session.start received -> first frame sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.frame_interval = Histogram(
            "framecast_frame_interval_seconds", "Time between delivered chunks divided by their frames",
            buckets=INTERVAL_BUCKETS, registry=r)
        self.switch_latency = Histogram(
            "framecast_switch_latency_seconds", "session.update received -> first frame under the new prompt sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.active_sessions = Gauge("framecast_active_sessions", "Streams being served", registry=r)
        self.queue_depth = Gauge("framecast_stream_queue_chunks",
                                 "Chunks generated and waiting to be sent, all streams together", registry=r)
        self.frames_generated = Counter("framecast_frames_generated", "Frames generated",
                                        ["kind"], registry=r)
        self.stream_errors = Counter("framecast_stream_errors", "Streams refused or ended by an error, by code",
                                     ["code"], registry=r)
        self.ready = Gauge("framecast_ready", "1 once the model is loaded and warmed up", registry=r)

    def watch_jobs(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_JobCounts(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)
