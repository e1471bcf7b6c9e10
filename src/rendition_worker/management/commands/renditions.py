"""`manage.py renditions status|metrics|reconcile|generate|purge`: see and fix what exists."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from rendition_worker import registry, tasks
from rendition_worker.conf import get_settings
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services.generation import source_generate
from rendition_worker.services.metrics import metrics_snapshot, metrics_text
from rendition_worker.services.reconcile import BATCH_SIZE, Reconciler

# How many failed sources `status` lists by name.
FAILED_SHOWN = 20


class Command(BaseCommand):
    """Status, reconciliation, generation and purge of renditions."""

    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the four subcommands and their flags (DESIGN.md, "Operating it")."""
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        status = actions.add_parser("status", help="counts of sources, renditions and failures")
        status.add_argument("--json", action="store_true", help="one JSON object")
        actions.add_parser(
            "metrics", help="backlog and render figures in the Prometheus text format"
        )
        reconcile = actions.add_parser(
            "reconcile", help="generate what is missing, delete what is obsolete or orphaned"
        )
        reconcile.add_argument("--dry-run", action="store_true", help="plan, change nothing")
        reconcile.add_argument(
            "--sync", action="store_true", help="generate in this process (no worker needed)"
        )
        reconcile.add_argument(
            "--retry-failed", action="store_true", help="also retry sources that failed"
        )
        reconcile.add_argument("--json", action="store_true", help="one JSON object")
        generate = actions.add_parser("generate", help="(re)generate the renditions of fields")
        generate.add_argument(
            "fields", nargs="*", metavar="app_label.Model.field", help="default: every field"
        )
        generate.add_argument("--sync", action="store_true", help="generate in this process")
        generate.add_argument(
            "--force", action="store_true", help="also check that every rendition file exists"
        )
        purge = actions.add_parser("purge", help="delete obsolete (or all) renditions")
        which = purge.add_mutually_exclusive_group()
        which.add_argument(
            "--obsolete", action="store_true", help="obsolete renditions and orphans (default)"
        )
        which.add_argument("--all", action="store_true", help="every rendition, rows and files")
        purge.add_argument("--dry-run", action="store_true", help="count, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the chosen subcommand."""
        get_settings().require_valid()
        handler = {
            "status": self._status,
            "metrics": self._metrics,
            "reconcile": self._reconcile,
            "generate": self._generate,
            "purge": self._purge,
        }[options["action"]]
        handler(options)

    def _progress(self, options: dict[str, Any], **kwargs: Any) -> tqdm[Any]:
        # A bar on a terminal only: logs and --json output stay clean.
        hidden = options.get("json", False) or not sys.stderr.isatty()
        return tqdm(disable=hidden, file=sys.stderr, **kwargs)

    def _metrics(self, options: dict[str, Any]) -> None:
        self.stdout.write(metrics_text().decode(), ending="")

    def _status(self, options: dict[str, Any]) -> None:
        snapshot = metrics_snapshot()
        now = timezone.now()
        report: dict[str, Any] = {
            "sources": snapshot.sources,
            "renditions": Rendition.objects.filter(state=State.READY).count(),
            "tombstones": {
                "due": Tombstone.objects.filter(delete_after__lte=now).count(),
                "waiting": Tombstone.objects.filter(delete_after__gt=now).count(),
            },
            "failed": [
                {
                    "model": f"{row.content_type.app_label}.{row.content_type.model}",
                    "object_id": row.object_id,
                    "field": row.field,
                    "name": row.name,
                    "error": row.error,
                }
                for row in Source.objects.filter(state=State.FAILED)
                .select_related("content_type")
                .order_by("-updated_at")[:FAILED_SHOWN]
            ],
            **snapshot.as_dict(),
        }
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        sources = report["sources"]
        self.stdout.write(
            f"sources: {sources['ready']} ready, {sources['pending']} pending, "
            f"{sources['failed']} failed; renditions: {report['renditions']} ready; "
            f"stale files waiting for deletion: {report['tombstones']['due']} due, "
            f"{report['tombstones']['waiting']} later"
        )
        self.stdout.write(_backlog_line(snapshot.as_dict()))
        for failed in report["failed"]:
            self.stdout.write(
                f"  failed {failed['model']} pk={failed['object_id']} {failed['field']} "
                f"{failed['name']}: {failed['error']}"
            )

    def _reconcile(self, options: dict[str, Any]) -> None:
        reconciler = Reconciler(
            dry_run=options["dry_run"],
            sync=options["sync"],
            retry_failed=options["retry_failed"],
            enqueue=tasks.PacedBackfill(on_wait=self._waiting_for_room(options)),
        )
        with self._progress(options, unit=" items", desc="reconcile") as bar:

            def advance(phase: str, items: int) -> None:
                bar.set_description(phase)
                bar.update(items)

            result = reconciler.run(progress=advance)
        report = result.as_dict()
        # Not among the documented --json keys (DESIGN.md); the warning log names the files.
        undeleted = result.counts.get("delete_failed", 0)
        if undeleted:
            self.stderr.write(
                f"{undeleted} files could not be deleted (kept; the next run tries again)"
            )
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        verb = "would" if report["dry_run"] else "did"
        self.stdout.write(
            f"{report['sources']} sources, {report['required']} renditions required: "
            f"{report['present']} present, {report['missing']} missing, {report['broken']} "
            f"broken, {report['obsolete']} obsolete, {report['orphans']} orphan files, "
            f"{report['failed']} failed sources skipped"
            + (" (retried)" if options["retry_failed"] else "")
        )
        self.stdout.write(
            f"{verb}: enqueue {report['enqueued']}, generate {report['generated']}, delete "
            f"{report['deleted_rows']} rows and {report['deleted_files']} files "
            f"in {report['elapsed_s']} s"
        )

    def _waiting_for_room(self, options: dict[str, Any]) -> Any:
        """Say once that the bulk lane is full and the command waits for the workers."""
        said: list[bool] = []

        def waiting(queued: int | None) -> None:
            if not said:
                count = "an unknown number of" if queued is None else str(queued)
                self.stderr.write(
                    f"{count} tasks wait on the bulk lane {get_settings().bulk_queue!r} "
                    f"(BULK_MAX_QUEUED {get_settings().bulk_max_queued}); waiting for the "
                    "workers to take some"
                )
                said.append(True)

        return waiting

    def _generate(self, options: dict[str, Any]) -> None:
        entries = _fields(options["fields"])
        enqueue = tasks.PacedBackfill(on_wait=self._waiting_for_room(options))
        queued = rendered = 0
        for entry in entries:
            rows = (
                entry.model._default_manager.exclude(**{entry.field.attname: ""})
                .exclude(**{f"{entry.field.attname}__isnull": True})
                .order_by("pk")
                .values_list("pk", entry.field.attname)
            )
            with self._progress(
                options, total=rows.count(), unit=" sources", desc=entry.key
            ) as bar:
                for pk, name in rows.iterator(chunk_size=BATCH_SIZE):
                    if options["sync"]:
                        summary = source_generate(
                            entry.model_label, str(pk), entry.name, name, force=options["force"]
                        )
                        rendered += int(summary.get("renditions", 0))
                    else:
                        enqueue(entry, str(pk), name, options["force"])
                        queued += 1
                    bar.update(1)
        if options["sync"]:
            self.stdout.write(f"generated {rendered} renditions")
        else:
            self.stdout.write(
                f"enqueued {queued} sources on the bulk lane {get_settings().bulk_queue!r}"
            )

    def _purge(self, options: dict[str, Any]) -> None:
        if options["all"]:
            self._purge_all(options["dry_run"])
            return
        reconciler = Reconciler(dry_run=options["dry_run"], generate=False)
        report = reconciler.run().as_dict()
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{report['obsolete']} obsolete renditions and {report['orphans']} orphan files: "
            f"{verb} {report['deleted_rows']} rows and {report['deleted_files']} files"
        )

    def _purge_all(self, dry_run: bool) -> None:
        files = rows = 0
        for entry in registry.registered_fields():
            storage = registry.storage_for(registry.rendition_storage_ref(entry))
            renditions = Rendition.objects.filter(
                source__content_type__app_label=entry.model._meta.app_label,
                source__content_type__model=entry.model._meta.model_name,
                source__field=entry.name,
            ).order_by("pk")
            after = 0
            while batch := list(
                renditions.filter(pk__gt=after).values_list("pk", "name")[:BATCH_SIZE]
            ):
                after = batch[-1][0]
                rows += len(batch)
                files += sum(1 for _, name in batch if name)
                if not dry_run:
                    for _, name in batch:
                        if name:
                            storage.delete(name)
                    Rendition.objects.filter(pk__in=[pk for pk, _ in batch]).delete()
        if not dry_run:
            Source.objects.all().delete()
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {rows} rendition rows and {files} files")


def _backlog_line(figures: dict[str, Any]) -> str:
    lanes = ", ".join(
        f"{name} {lane['queue']!r} {'?' if lane['waiting'] is None else lane['waiting']}"
        for name, lane in figures["lanes"].items()
    )
    oldest = figures["oldest_pending_s"]
    return (
        f"waiting on the broker: {lanes}; outbox: {figures['outbox']['waiting']}; oldest "
        f"pending: {'none' if oldest is None else f'{oldest:.0f} s'}; rendered in the last "
        f"hour: {figures['renders_last_hour']} ({figures['failures_last_hour']} failed)"
    )


def _fields(keys: list[str]) -> list[RegisteredField]:
    registered = {entry.key: entry for entry in registry.registered_fields()}
    if not keys:
        return list(registered.values())
    unknown = [key for key in keys if key not in registered]
    if unknown:
        raise CommandError(
            f"not a registered field: {', '.join(unknown)} "
            f"(registered: {', '.join(registered) or 'none'})"
        )
    return [registered[key] for key in keys]
