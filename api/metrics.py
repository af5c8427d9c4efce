"""Prometheus metrics, read from Redis at scrape time so that every API replica reports the same
numbers and workers on other machines count too.

- ``etm_jobs{state}``: jobs per state (queued, running, succeeded, failed, canceled).
- ``etm_queue_depth{queue}``: tasks waiting in each Celery queue.
- ``etm_job_duration_seconds``: histogram of computed jobs' durations (cache hits excluded).
- ``etm_images_processed_total``, ``etm_images_per_second``: images scored (images x candidates) and
  the throughput of the last computed job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from jobs.job_store import DURATION_BUCKETS, JobStore
from jobs.records import STATES

QUEUES = ("cpu", "gpu")
# kombu's Redis transport keeps one list per queue and priority step.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class JobsCollector(Collector):
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Any]:
        stats = self.jobs.stats()
        g = GaugeMetricFamily("etm_jobs", "Jobs per state.", labels=["state"])
        for s in STATES:
            g.add_metric([s], stats["states"][s])
        yield g

        q = GaugeMetricFamily("etm_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"])
        pipe = self.jobs.r.pipeline()
        for name in QUEUES:
            for suffix in _PRIORITY_SUFFIXES:
                pipe.llen(name + suffix)
        lens = pipe.execute()
        n = len(_PRIORITY_SUFFIXES)
        for i, name in enumerate(QUEUES):
            q.add_metric([name], sum(lens[i * n : (i + 1) * n]))
        yield q

        d = stats["duration"]
        buckets = [(str(float(b)), d.get(f"le:{b}", 0.0)) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", d.get("le:+Inf", 0.0)))
        yield HistogramMetricFamily(
            "etm_job_duration_seconds",
            "Duration of computed jobs, from start to result.",
            buckets=buckets,
            sum_value=d.get("sum", 0.0),
        )
        images = stats["images"]
        c = CounterMetricFamily("etm_images_processed", "Images scored by computed jobs (images x candidates).")
        c.add_metric([], images.get("images", 0.0))
        yield c
        ips = GaugeMetricFamily("etm_images_per_second", "Throughput of the last computed job (images x candidates).")
        ips.add_metric([], images.get("last_images_per_second", 0.0))
        yield ips


def render(jobs: JobStore) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(jobs))
    return generate_latest(registry)
