"""Admin views: each source's state and renditions, failed ones filterable, forced regeneration.

`SourceAdmin` lists rendition-worker's own state rows, read-only (the app manages them).
`RenditionAdminMixin` goes on a site's own ModelAdmin (`class PhotoAdmin(RenditionAdminMixin,
admin.ModelAdmin)`) and adds the state and renditions of every registered field to the
change page, a focal point widget per registered image (click or drag the subject's box on
the image), plus the same "Regenerate renditions" action.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import flatten_fieldsets, quote
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.admin import GenericTabularInline
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms import ModelForm
from django.forms.models import ModelFormMetaclass
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import ngettext

from rendition_worker import registry
from rendition_worker.core.focal import stored_focal_box
from rendition_worker.core.specs import parse_spec
from rendition_worker.models import Rendition, Source, State
from rendition_worker.registry import RegisteredField
from rendition_worker.services import broker, outbox
from rendition_worker.services.focal import set_focal_point
from rendition_worker.widgets import FocalPointField, FocalPointWidget

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
    _SourceAdmin = admin.ModelAdmin[Source]
    _RenditionInline = admin.TabularInline[Rendition, Source]
    _SourceForm = ModelForm[Source]
else:  # not subscriptable at runtime
    _ModelAdmin = _SourceAdmin = admin.ModelAdmin
    _RenditionInline = admin.TabularInline
    _SourceForm = ModelForm

REGENERATE = "Regenerate renditions"
ERROR_EXCERPT_CHARS = 80
# The focal point form field of registered field `image` is `image_focal_point`.
FOCAL_FIELD_SUFFIX = "_focal_point"
# The widget shows the largest ready uncropped rendition up to this wide (the original
# when there is none): big enough to aim at, far smaller than a camera file.
FOCAL_IMAGE_MAX_WIDTH = 1000


def _rendition_url(source: Source, rendition: Rendition) -> str | None:
    ct = source.content_type
    entry = registry.field_for(f"{ct.app_label}.{ct.model}", source.field)
    if entry is None or not rendition.name:
        return None
    try:
        return registry.storage_for(registry.rendition_storage_ref(entry)).url(rendition.name)
    except NotImplementedError:
        return None


def _file_link(source: Source, rendition: Rendition) -> str:
    url = _rendition_url(source, rendition)
    if url is None:
        return rendition.name or "-"
    return format_html('<a href="{}">{}</a>', url, rendition.name.rsplit("/", 1)[-1])


def _enqueue_regeneration(entries: Sequence[RegisteredField], queryset: QuerySet[Any]) -> int:
    """Queue forced generation of the current file of each field on each row; returns the count.

    The names are read from the rows themselves, not from the state rows: a file changed
    without signals (`update()`) would otherwise be queued under a stale name, and skipped.
    """
    queued = 0
    attnames = [entry.field.attname for entry in entries]
    for pk, *names in queryset.values_list("pk", *attnames):
        for entry, name in zip(entries, names, strict=True):
            if name:
                outbox.work_request(entry, str(pk), name, force=True, lane=broker.BULK)
                queued += 1
    return queued


def _report(modeladmin: _ModelAdmin, request: HttpRequest, queued: int, selected: int) -> None:
    if queued:
        message = ngettext(
            "Queued regeneration of %(count)d image.",
            "Queued regeneration of %(count)d images.",
            queued,
        ) % {"count": queued}
        modeladmin.message_user(request, message, messages.SUCCESS)
    skipped = selected - queued
    if skipped > 0:
        modeladmin.message_user(
            request,
            ngettext(
                "%(count)d selected source was skipped: its row is gone or has no image, or "
                "its field is no longer registered.",
                "%(count)d selected sources were skipped: their rows are gone or have no "
                "image, or their fields are no longer registered.",
                skipped,
            )
            % {"count": skipped},
            messages.WARNING,
        )
    elif not queued:
        modeladmin.message_user(
            request, "Nothing to regenerate: no image in a registered field.", messages.WARNING
        )


class RenditionInline(_RenditionInline):
    """The renditions of one source, read-only."""

    model = Rendition
    fields = ("spec", "format", "width", "height", "size_display", "state", "encode_ms", "file")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Rendition]:
        """Renditions ordered by spec, with what their file URLs need."""
        return super().get_queryset(request).select_related("source__content_type").order_by("spec")

    def has_add_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        """Renditions are written by the worker only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        """Renditions are written by the worker only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        """Renditions are deleted by the worker only."""
        return False

    @admin.display(description="size")
    def size_display(self, obj: Rendition) -> str:
        """The file size, human-readable."""
        return filesizeformat(obj.size) if obj.size is not None else "-"

    @admin.display(description="file")
    def file(self, obj: Rendition) -> str:
        """A link to the rendition's file."""
        return _file_link(obj.source, obj)


@admin.register(Source)
class SourceAdmin(_SourceAdmin):
    """rendition-worker's state rows: read-only, filterable by state, with forced regeneration."""

    list_display = (
        "object_link",
        "field",
        "name",
        "state",
        "error_excerpt",
        "rendition_count",
        "render_ms",
        "updated_at",
    )
    list_display_links = ("name",)
    list_filter = ("state", "field", ("content_type", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("content_type",)
    search_fields = ("name", "=object_id")
    ordering = ("-updated_at", "-pk")
    fields = (
        "object_link",
        "field",
        "name",
        "digest",
        "state",
        "error",
        "width",
        "height",
        "render_ms",
        "claim",
        "claimed_until",
        "enqueued_at",
        "started_at",
        "finished_at",
        "updated_at",
    )
    readonly_fields = fields
    inlines = (RenditionInline,)
    actions = ("regenerate_renditions",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Source]:
        """Sources with their rendition count, in one query."""
        # A subquery, not Count() over a join: the changelist's COUNT(*) and filter queries
        # can then drop it, which matters with millions of renditions.
        count = (
            Rendition.objects.filter(source=OuterRef("pk"))
            .order_by()
            .values("source")
            .annotate(count=Count("pk"))
            .values("count")
        )
        return super().get_queryset(request).annotate(_rendition_count=Coalesce(Subquery(count), 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Sources are created by the app's signal handlers only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        """Sources are changed by the app only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        """Deleting a state row would leave its files unaccounted for until reconciliation."""
        return False

    def has_regenerate_permission(self, request: HttpRequest) -> bool:
        """Regenerating needs the change permission on sources, although the views are read-only."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.display(description="object", ordering="object_id")
    def object_link(self, obj: Source) -> str:
        """The source's row, linked to its admin change page when it has one."""
        model = obj.content_type.model_class()
        label = model._meta.label if model is not None else obj.content_type.model
        text = f"{label} {obj.object_id}"
        if model is None or not self.admin_site.is_registered(model):
            return text
        opts = model._meta
        try:
            url = reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                args=(quote(obj.object_id),),
            )
        except NoReverseMatch:
            return text
        return format_html('<a href="{}">{}</a>', url, text)

    @admin.display(description="error")
    def error_excerpt(self, obj: Source) -> str:
        """The start of the error message."""
        return Truncator(obj.error).chars(ERROR_EXCERPT_CHARS)

    @admin.display(description="renditions", ordering="_rendition_count")
    def rendition_count(self, obj: Source) -> int:
        """How many rendition rows the source has."""
        return int(getattr(obj, "_rendition_count", 0))

    @admin.action(description=REGENERATE, permissions=["regenerate"])
    def regenerate_renditions(self, request: HttpRequest, queryset: QuerySet[Source]) -> None:
        """Re-enqueue generation of the selected sources, rewriting every rendition."""
        object_ids: dict[tuple[int, str], list[str]] = defaultdict(list)
        selected = 0
        for content_type_id, field, object_id in queryset.values_list(
            "content_type_id", "field", "object_id"
        ):
            object_ids[content_type_id, field].append(object_id)
            selected += 1
        queued = 0
        for (content_type_id, field), ids in object_ids.items():
            ct = ContentType.objects.get_for_id(content_type_id)
            entry = registry.field_for(f"{ct.app_label}.{ct.model}", field)
            if entry is not None:
                rows = entry.model._default_manager.filter(pk__in=ids)
                queued += _enqueue_regeneration((entry,), rows)
        _report(self, request, queued, selected)


class _ViewOnlySourceForm(_SourceForm):
    # Generic inlines lack the admin's view-only form: without this, a tampered POST of the
    # parent's change form could re-save a state row over the worker's concurrent update.
    def has_changed(self) -> bool:
        return False


class SourceInline(GenericTabularInline):
    """The state and renditions of each registered field of one row, read-only."""

    model = Source
    form = _ViewOnlySourceForm
    ct_field = "content_type"
    ct_fk_field = "object_id"
    fields = ("field", "name", "state", "error", "render_ms", "renditions_display")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name = "rendition source"
    verbose_name_plural = "renditions"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Source]:
        """Sources with their renditions prefetched, so the panel costs two queries."""
        return (
            super()
            .get_queryset(request)
            .select_related("content_type")
            .prefetch_related(models.Prefetch("renditions", Rendition.objects.order_by("spec")))
            .order_by("field")
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Whoever may view or change the row may see its renditions."""
        opts = self.parent_model._meta
        return any(
            request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")
            for action in ("view", "change")
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Sources are created by the app's signal handlers only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Sources are changed by the app only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Sources are deleted by the app only."""
        return False

    @admin.display(description="renditions")
    def renditions_display(self, obj: Source) -> SafeString:
        """Each rendition: spec, size, state and a link to its file."""
        return format_html_join(
            "",
            "<div>{} {} &times; {}, {}, {}: {}</div>",
            (
                (
                    rendition.spec,
                    rendition.width or "?",
                    rendition.height or "?",
                    filesizeformat(rendition.size) if rendition.size is not None else "-",
                    rendition.state,
                    _file_link(obj, rendition),
                )
                for rendition in obj.renditions.all()
            ),
        )


def _focal_image_url(entry: RegisteredField, instance: Any, source: Source | None) -> str:
    """What the focal point widget shows: a ready uncropped rendition, or the original."""
    fieldfile = getattr(instance, entry.name)
    candidates = []
    if source is not None and source.name == fieldfile.name:
        for rendition in source.renditions.all():
            operation = parse_spec(rendition.spec).operation
            if rendition.state == State.READY and rendition.width and not operation.crops:
                candidates.append(rendition)
    fitting = [r for r in candidates if (r.width or 0) <= FOCAL_IMAGE_MAX_WIDTH]
    if fitting:
        best = max(fitting, key=lambda rendition: rendition.width or 0)
        url = _rendition_url(source, best) if source is not None else None
        if url:
            return url
    return str(fieldfile.url)


def _fill_focal_fields(form: ModelForm[Any], entries: Sequence[RegisteredField]) -> None:
    """Give each focal point field its image and the box recorded for that file (2 queries)."""
    instance = form.instance
    content_type = ContentType.objects.get_for_model(type(instance))
    sources = {
        source.field: source
        for source in Source.objects.filter(
            content_type=content_type,
            object_id=str(instance.pk),
            field__in=[entry.name for entry in entries],
        ).prefetch_related("renditions")
    }
    for entry in entries:
        name = entry.name + FOCAL_FIELD_SUFFIX
        source = sources.get(entry.name)
        widget = form.fields[name].widget
        assert isinstance(widget, FocalPointWidget)
        widget.image_url = _focal_image_url(entry, instance, source)
        current = getattr(instance, entry.name).name
        recorded = source.focal_point if source is not None and source.name == current else None
        form.initial[name] = stored_focal_box(recorded)


class RenditionAdminMixin(_ModelAdmin):
    """For a site's ModelAdmin of a model with registered image fields: state and regeneration.

    Adds a read-only panel of each registered field's state, error and renditions to the
    change page, a focal point widget for each registered field that holds an image (saved
    through `set_focal_point`, so only the crops are rendered again), and a "Regenerate
    renditions" action (change permission required).
    """

    rendition_inline: type[SourceInline] = SourceInline

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm[Any]]:
        """The model's form, plus a focal point field per registered image on a change page."""
        entries = self._focal_entries(obj)
        names = {entry.name + FOCAL_FIELD_SUFFIX for entry in entries}
        if names:
            # The model form must not be asked for these: they are the form's, not the model's.
            fields = kwargs.get("fields")
            if "fields" not in kwargs:
                fields = flatten_fieldsets(self.get_fieldsets(request, obj))
            if fields is not None:
                kwargs["fields"] = [name for name in fields if name not in names]
        form = super().get_form(request, obj, change=change, **kwargs)
        if not entries:
            return form
        attrs: dict[str, Any] = {
            entry.name + FOCAL_FIELD_SUFFIX: FocalPointField(
                required=False,
                label=f"Focal point of {entry.field.verbose_name}",
                help_text="Where the subject is; crops keep it in view.",
            )
            for entry in entries
        }
        parent_init = form.__init__

        def __init__(self: ModelForm[Any], *args: Any, **kw: Any) -> None:
            parent_init(self, *args, **kw)
            _fill_focal_fields(self, entries)

        attrs.update(__init__=__init__, __module__=__name__)
        return cast(
            "type[ModelForm[Any]]",
            ModelFormMetaclass(f"{form.__name__}WithFocalPoints", (form,), attrs),
        )

    def _focal_entries(self, obj: Any) -> list[RegisteredField]:
        """The registered fields of `obj` that hold an image (none on an add page)."""
        if obj is None:
            return []
        return [entry for entry in registry.fields_of(self.model) if getattr(obj, entry.name)]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """The model's fieldsets; the focal point fields in one of their own if not placed."""
        fieldsets = list(super().get_fieldsets(request, obj))
        placed = set(flatten_fieldsets(fieldsets))
        missing: list[Any] = [
            entry.name + FOCAL_FIELD_SUFFIX
            for entry in self._focal_entries(obj)
            if entry.name + FOCAL_FIELD_SUFFIX not in placed
        ]
        if missing:
            fieldsets.append(("Focal points", {"fields": missing}))
        return fieldsets

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Save the row, then any focal point changed on an image that was not replaced.

        A focal point belongs to the image it was drawn on: one sent with a new upload in
        the same save would be for the old image, and is dropped (the new one starts
        without one).
        """
        super().save_model(request, obj, form, change)
        for entry in registry.fields_of(self.model):
            name = entry.name + FOCAL_FIELD_SUFFIX
            if name not in form.fields or entry.name in form.changed_data:
                continue
            if name in form.changed_data and getattr(obj, entry.name):
                set_focal_point(getattr(obj, entry.name), _as_tuple(form.cleaned_data[name]))

    def get_inlines(
        self, request: HttpRequest, obj: Any
    ) -> list[type[admin.options.InlineModelAdmin[Any, Any]]]:
        """The model's own inlines, plus the renditions panel on a change page."""
        inlines = list(super().get_inlines(request, obj))
        if obj is not None and registry.fields_of(self.model):
            inlines.append(self.rendition_inline)
        return inlines

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """The model's own actions, plus "Regenerate renditions" for those who may change rows."""
        actions = super().get_actions(request)
        if self.actions is None or IS_POPUP_VAR in request.GET:
            return actions
        if registry.fields_of(self.model) and self.has_change_permission(request):
            action = self.get_action("regenerate_renditions")
            if action is not None:
                actions.setdefault("regenerate_renditions", action)
        return actions

    @admin.action(description=REGENERATE, permissions=["change"])
    def regenerate_renditions(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Re-enqueue generation of every registered image of the selected rows."""
        entries = registry.fields_of(self.model)
        queued = _enqueue_regeneration(entries, queryset)
        _report(self, request, queued, queued)


def _as_tuple(box: Any) -> tuple[float, float, float, float] | None:
    return None if box is None else (box.x, box.y, box.width, box.height)
