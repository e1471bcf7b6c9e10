"""How far behind the workers are: backlog per lane, oldest pending work, recent renders.

One snapshot feeds `renditions status --json`, `renditions metrics` and the metrics view
(Prometheus text format, through prometheus-client), so the three always agree. Each
figure is one indexed query or one broker round trip with a short timeout: a scraper may
read it every few seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rendition_worker.conf import get_settings
from rendition_worker.models import Intent, Source, State
from rendition_worker.services import broker

# The window of the "renders in the last hour" figures.
RECENT = timedelta(hours=1)


@dataclass(frozen=True)
class Lane:
    """One lane's queue and how many tasks wait in it (None: the broker did not answer)."""

    queue: str
    waiting: int | None


@dataclass(frozen=True)
class Snapshot:
    """The figures at one moment."""

    sources: dict[str, int]
    lanes: dict[str, Lane]
    intents_waiting: int
    oldest_intent_s: float | None
    oldest_pending_s: float | None
    renders_last_hour: int
    failures_last_hour: int

    @property
    def broker_up(self) -> bool:
        """Whether the broker answered the queue counts."""
        return all(lane.waiting is not None for lane in self.lanes.values())

    def as_dict(self) -> dict[str, object]:
        """The figures as the keys `renditions status --json` adds."""
        return {
            "lanes": {
                name: {"queue": lane.queue, "waiting": lane.waiting}
                for name, lane in self.lanes.items()
            },
            "outbox": {"waiting": self.intents_waiting, "oldest_s": self.oldest_intent_s},
            "oldest_pending_s": self.oldest_pending_s,
            "renders_last_hour": self.renders_last_hour,
            "failures_last_hour": self.failures_last_hour,
        }


def metrics_snapshot() -> Snapshot:
    """Read every figure now."""
    settings = get_settings()
    now = timezone.now()
    queues = {name: broker.lane_queue(name, settings) for name in (broker.INTERACTIVE, broker.BULK)}
    lengths = broker.queue_lengths(queues.values())
    lanes = {
        name: Lane(queue, None if lengths is None else lengths.get(queue, 0))
        for name, queue in queues.items()
    }
    by_state = Counter(dict(Source.objects.values_list("state").annotate(Count("pk"))))
    intents = Intent.objects.aggregate(waiting=Count("pk"), oldest=Min("created_at"))
    oldest_source = Source.objects.filter(state=State.PENDING).aggregate(oldest=Min("enqueued_at"))[
        "oldest"
    ]
    recent = Source.objects.filter(finished_at__gte=now - RECENT)
    # A pending change is either still an intent (no worker has it yet) or a pending state row.
    pending = [moment for moment in (intents["oldest"], oldest_source) if moment is not None]
    return Snapshot(
        sources={state: by_state.get(state, 0) for state in State.values},
        lanes=lanes,
        intents_waiting=intents["waiting"],
        oldest_intent_s=_age(now, intents["oldest"]),
        oldest_pending_s=_age(now, min(pending)) if pending else None,
        renders_last_hour=recent.filter(state=State.READY).count(),
        failures_last_hour=recent.filter(state=State.FAILED).count(),
    )


def _age(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else round(max(0.0, (now - moment).total_seconds()), 3)


def metrics_text(snapshot: Snapshot | None = None) -> bytes:
    """The snapshot in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot or metrics_snapshot()))
    return generate_latest(registry)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> list[GaugeMetricFamily]:
        shot = self.snapshot
        sources = GaugeMetricFamily(
            "rendition_worker_sources", "Source versions by state.", labels=["state"]
        )
        for state, count in shot.sources.items():
            sources.add_metric([state], count)
        backlog = GaugeMetricFamily(
            "rendition_worker_lane_backlog",
            "Tasks waiting on the broker per lane (absent while the broker does not answer).",
            labels=["lane", "queue"],
        )
        for name, lane in shot.lanes.items():
            if lane.waiting is not None:
                backlog.add_metric([name, lane.queue], lane.waiting)
        families = [
            sources,
            backlog,
            GaugeMetricFamily(
                "rendition_worker_broker_up",
                "1 if the broker answered the queue counts, else 0.",
                value=int(shot.broker_up),
            ),
            GaugeMetricFamily(
                "rendition_worker_outbox_intents",
                "Changes recorded that no worker has finished yet.",
                value=shot.intents_waiting,
            ),
            GaugeMetricFamily(
                "rendition_worker_oldest_pending_seconds",
                "Age of the oldest change still waiting for its renditions (0 when none).",
                value=shot.oldest_pending_s or 0.0,
            ),
            GaugeMetricFamily(
                "rendition_worker_renders_last_hour",
                "Source versions rendered ready in the last hour.",
                value=shot.renders_last_hour,
            ),
            GaugeMetricFamily(
                "rendition_worker_failures_last_hour",
                "Source versions recorded failed in the last hour.",
                value=shot.failures_last_hour,
            ),
        ]
        return families
