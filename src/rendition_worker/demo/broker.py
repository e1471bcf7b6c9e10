"""Celery's filesystem transport, made safe for several processes publishing at once.

kombu's filesystem channel creates a message file in the queue folder and then writes it; a
worker listing the folder in between takes the empty file and dies on its JSON
(kombu issue #1551). The demo's web server, launcher, beat and worker all publish while the
worker consumes, so this channel writes each message in a staging folder and renames it
into the queue folder: a rename within one file system is atomic, so a consumer only ever
sees whole messages. Exchange tables have the same window when first created, and are
read again until whole. And a worker given several queues takes from them in the order it
was given them, as Redis does with `queue_order_strategy: priority`: the interactive lane
first, the bulk lane when it is empty (kombu's virtual channels otherwise take turns).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps
from kombu.utils.scheduling import FairCycle

# A table file being created is empty for microseconds; this is far beyond that.
TABLE_READ_ATTEMPTS = 50
TABLE_RETRY_SECONDS = 0.01


class InOrderCycle(FairCycle):
    """Every poll tries the queues from the first one: earlier queues always come first."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        """Take from the first queue that has a message."""
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(filesystem.Channel):
    """A filesystem channel whose messages appear in the queue folder whole, lanes in order."""

    def _reset_cycle(self) -> None:
        self._cycle = InOrderCycle(self._get_and_deliver, self._active_queues, Empty)

    @property
    def staging_folder(self) -> Path:
        """Where messages are written before they are renamed into the queue folder.

        Transport option `staging_folder`; by default `staging` beside the queue folder. It
        must be on the queue folder's file system, or the rename is a copy.
        """
        configured = self.transport_options.get("staging_folder")
        if configured:
            return Path(configured)
        return Path(self.data_folder_out).absolute().parent / "staging"

    # The ignores: kombu's stubs declare these overrides incompatible with the virtual
    # channel's signatures in filesystem.Channel itself; the signatures are kombu's own.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """Publish `payload` to `queue`: write it aside, then rename it into the queue."""
        # kombu's naming, which its consumer sorts and filters on, with the time in zero-padded
        # nanoseconds rather than milliseconds: one process's messages stay in order even when
        # it sends several in a millisecond (a random uuid would otherwise order them).
        name = f"{time.monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        staged = self.staging_folder / name
        try:
            staged.parent.mkdir(parents=True, exist_ok=True)
            with staged.open("xb") as file:
                file.write(dumps(payload).encode())
            staged.replace(Path(self.data_folder_out) / name)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise ChannelError(f"Cannot add file {name!r} to {self.data_folder_out}") from exc

    def get_table(self, exchange: str) -> list[filesystem.exchange_queue_t]:  # type: ignore[override]
        """The exchange's bindings, read again while another process is still creating them."""
        for _ in range(TABLE_READ_ATTEMPTS - 1):
            try:
                return super().get_table(exchange)
            except ValueError:
                time.sleep(TABLE_RETRY_SECONDS)
        return super().get_table(exchange)


class Transport(filesystem.Transport):
    """The filesystem transport with `Channel` above: `broker_transport` names this class."""

    Channel = Channel
