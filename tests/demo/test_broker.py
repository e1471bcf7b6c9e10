"""The demo's filesystem transport: a consumer only ever sees whole messages.

kombu's own filesystem channel creates the message file in the queue folder before writing
it; the demo's worker once took such an empty file and died on its JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from rendition_worker.demo.broker import Channel

COUNT = 20


def names(folder: Path) -> list[str]:
    """The names in a folder."""
    return sorted(path.name for path in folder.iterdir())


class FolderProbe:
    """A message value that, while being serialized, records what the queue folder holds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[str] | None = None

    def __json__(self) -> str:
        """kombu's JSON encoder calls this while the message is being written."""
        self.seen = names(self.folder)
        return "probe"


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[Connection]:
    """A kombu connection on the demo's transport, folders in tmp_path as the demo lays them."""
    broker = tmp_path / "broker"
    for folder in ("queue", "staging", "processed", "control"):
        (broker / folder).mkdir(parents=True)
    options = {
        "data_folder_in": str(broker / "queue"),
        "data_folder_out": str(broker / "queue"),
        "staging_folder": str(broker / "staging"),
        "store_processed": True,
        "processed_folder": str(broker / "processed"),
        "control_folder": str(broker / "control"),
    }
    with Connection(
        "filesystem://",
        transport="rendition_worker.demo.broker:Transport",
        transport_options=options,
    ) as conn:
        yield conn


def test_a_message_appears_in_the_queue_folder_only_when_whole(
    connection: Connection, tmp_path: Path
) -> None:
    queue_folder = tmp_path / "broker" / "queue"
    channel = connection.default_channel
    assert isinstance(channel, Channel)
    probe = FolderProbe(queue_folder)
    channel._put("renditions", {"body": "payload", "probe": probe})
    assert probe.seen == []  # nothing there while it was being written
    [name] = names(queue_folder)
    assert name.endswith(".renditions.msg")
    assert json.loads((queue_folder / name).read_text()) == {"body": "payload", "probe": "probe"}
    assert names(tmp_path / "broker" / "staging") == []


def test_messages_go_through_whole_and_in_the_order_sent(
    connection: Connection, tmp_path: Path
) -> None:
    queue = connection.SimpleQueue("renditions")
    try:
        # Several go out within one millisecond, where kombu's own names shuffle them.
        for number in range(COUNT):
            queue.put({"number": number, "text": "x" * 10_000})
        received = []
        for _ in range(COUNT):
            message = queue.get(timeout=10)
            received.append(message.payload)
            message.ack()
    finally:
        queue.close()
    assert received == [{"number": number, "text": "x" * 10_000} for number in range(COUNT)]
    assert names(tmp_path / "broker" / "queue") == []
    assert len(names(tmp_path / "broker" / "processed")) == COUNT


def test_a_consumer_of_both_lanes_takes_the_first_one_while_it_has_messages(
    connection: Connection,
) -> None:
    from kombu import Consumer, Queue

    channel = connection.default_channel
    interactive, bulk = (
        Queue("renditions", channel=channel),
        Queue("renditions.bulk", channel=channel),
    )
    for queue in (interactive, bulk):
        queue.declare()
    # A backfill queued first, then two fresh uploads.
    with connection.Producer() as producer:
        for number in range(5):
            producer.publish({"bulk": number}, routing_key="renditions.bulk", declare=[bulk])
        for number in range(2):
            producer.publish({"fresh": number}, routing_key="renditions", declare=[interactive])
    received: list[dict[str, int]] = []

    def take(body: dict[str, int], message: object) -> None:
        received.append(body)
        message.ack()  # type: ignore[attr-defined]

    with Consumer(connection, [interactive, bulk], callbacks=[take], prefetch_count=1):
        while len(received) < 7:
            connection.drain_events(timeout=10)
    # Kombu's own virtual channels would take the queues in turns (bulk, fresh, bulk, ...).
    assert received == [{"fresh": 0}, {"fresh": 1}, *({"bulk": n} for n in range(5))]
