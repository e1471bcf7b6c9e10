"""The RENDITION_WORKER settings: declared defaults, parsed once, problems listed for checks.

`get_settings()` is what the app reads; it is cached and reset when a test overrides the
setting (`setting_changed`). Problems are not raised here but collected, so that
`manage.py check` can report all of them at once (see `checks.py`); using settings that
have problems raises `ImproperlyConfigured` with the first one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from rendition_worker.core.encoding import AVIF_CODECS, EncoderSettings
from rendition_worker.core.errors import InvalidSpec
from rendition_worker.core.focal import FocalMode
from rendition_worker.core.pipeline import RenderOptions
from rendition_worker.core.sources import Limits
from rendition_worker.core.specs import Spec, expand_set

SETTING = "RENDITION_WORKER"

DEFAULTS: Mapping[str, Any] = {
    "SETS": {},
    "FIELDS": {},
    "PATH": "renditions",
    "STORAGE": None,
    "DELETE_ORIGINALS": True,
    "MAX_PIXELS": 100_000_000,
    "QUEUE": "renditions",
    "BULK_QUEUE": "renditions.bulk",
    "BULK_MAX_QUEUED": 1000,
    "RELAY_AFTER": 60,
    "RECONCILE_EVERY": 3600,
    "ORPHAN_GRACE": 3600,
    "CACHE": "default",
    "DELETE_DELAY": 0,
    "AVIF_CODEC": "svt",
    "FOCAL_POINT": "auto",
    # MB (10^6 bytes) a worker process may grow by while it renders (see checks.py, W002):
    # the README's worst case for the default MAX_PIXELS, a 100 MP PNG at 6 MB a megapixel.
    "WORKER_MEMORY_BUDGET": 600,
    "TIME_LIMIT": 300,
}
_NON_NEGATIVE_INTS = ("MAX_PIXELS", "RECONCILE_EVERY", "ORPHAN_GRACE", "DELETE_DELAY")
# Zero would stop reconciliation (no bulk task may wait), relay every intent at once, or
# (TIME_LIMIT) stop every task the moment it starts.
_POSITIVE_INTS = ("BULK_MAX_QUEUED", "RELAY_AFTER", "WORKER_MEMORY_BUDGET", "TIME_LIMIT")
_UNITS = {"BULK_MAX_QUEUED": "tasks", "WORKER_MEMORY_BUDGET": "MB"}
_NON_EMPTY_STRINGS = ("QUEUE", "BULK_QUEUE", "CACHE")


@dataclass(frozen=True, slots=True)
class Problem:
    """One misconfiguration: a check id (`rendition_worker.E0xx`), what is wrong, what to do."""

    id: str
    message: str
    hint: str


# eq=False: compared and hashed by identity, so that per-settings caches can key on it.
@dataclass(frozen=True, eq=False)
class RenditionSettings:
    """The validated settings; `sets` are expanded to specs, `fields` keyed `app.Model.field`."""

    sets: Mapping[str, tuple[Spec, ...]]
    fields: Mapping[str, tuple[str, ...]]
    path: str
    storage: str | None
    delete_originals: bool
    max_pixels: int
    queue: str
    bulk_queue: str
    bulk_max_queued: int
    relay_after: int
    reconcile_every: int
    orphan_grace: int
    cache: str
    delete_delay: int
    avif_codec: str
    focal_point: FocalMode = FocalMode.AUTO
    worker_memory_budget: int = 600
    time_limit: int = 300
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    def specs_for(self, field_key: str) -> tuple[Spec, ...]:
        """Every spec required for a registered field, in set order, without duplicates."""
        names = self.fields.get(field_key, ())
        specs = [spec for name in names for spec in self.sets.get(name, ())]
        return tuple(dict.fromkeys(specs))

    def set_specs(self, field_key: str, set_name: str) -> tuple[Spec, ...]:
        """The specs of one set of a field; `ValueError` unless the field uses that set."""
        if set_name not in self.fields.get(field_key, ()):
            used = ", ".join(self.fields.get(field_key, ())) or "none"
            raise ValueError(
                f"set {set_name!r} is not configured for {field_key} (its sets: {used})"
            )
        return self.sets[set_name]

    @property
    def encoder(self) -> EncoderSettings:
        """Encoder settings for the pipeline (part of every rendition's name)."""
        return EncoderSettings(avif_codec=self.avif_codec)

    @property
    def render_options(self) -> RenderOptions:
        """Limits and encoder settings for one render."""
        return RenderOptions(limits=Limits(max_pixels=self.max_pixels), encoder=self.encoder)

    def require_valid(self) -> RenditionSettings:
        """Return self, or raise `ImproperlyConfigured` naming the first problem."""
        if self.problems:
            first = self.problems[0]
            raise ImproperlyConfigured(f"{first.id}: {first.message} ({first.hint})")
        return self


@functools.cache
def get_settings() -> RenditionSettings:
    """The current settings, parsed once per process (and again after `setting_changed`)."""
    return parse_settings(getattr(django_settings, SETTING, {}))


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: object) -> None:
    if setting in {SETTING, "STORAGES", "CACHES", "INSTALLED_APPS"}:
        get_settings.cache_clear()


def parse_settings(raw: object) -> RenditionSettings:
    """Parse a RENDITION_WORKER value; problems are collected, never raised."""
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        problems.append(
            Problem(
                "rendition_worker.E001",
                f"{SETTING} must be a dict, not {type(raw).__name__}",
                f"Set {SETTING} = {{'SETS': {{...}}, 'FIELDS': {{...}}}}.",
            )
        )
        raw = {}
    for key in raw:
        if key not in DEFAULTS:
            problems.append(
                Problem(
                    "rendition_worker.E002",
                    f"unknown key {key!r} in {SETTING}",
                    f"Remove it or use one of: {', '.join(DEFAULTS)}.",
                )
            )
    values = {**DEFAULTS, **{key: value for key, value in raw.items() if key in DEFAULTS}}
    _check_scalars(values, problems)
    sets = _parse_sets(values["SETS"], problems)
    # Fields are checked against every set name given, valid or not: a malformed set is
    # reported once, as itself, not again as "unknown" in every field that uses it.
    declared = set(values["SETS"]) if isinstance(values["SETS"], Mapping) else None
    fields = _parse_fields(values["FIELDS"], sets, declared, problems)
    return RenditionSettings(
        sets=sets,
        fields=fields,
        path=str(values["PATH"]).strip("/"),
        storage=values["STORAGE"] if isinstance(values["STORAGE"], str) else None,
        delete_originals=bool(values["DELETE_ORIGINALS"]),
        max_pixels=_int_or_default(values, "MAX_PIXELS"),
        queue=_str_or_default(values, "QUEUE"),
        bulk_queue=_str_or_default(values, "BULK_QUEUE"),
        bulk_max_queued=_int_or_default(values, "BULK_MAX_QUEUED", minimum=1),
        relay_after=_int_or_default(values, "RELAY_AFTER", minimum=1),
        reconcile_every=_int_or_default(values, "RECONCILE_EVERY"),
        orphan_grace=_int_or_default(values, "ORPHAN_GRACE"),
        cache=_str_or_default(values, "CACHE"),
        delete_delay=_int_or_default(values, "DELETE_DELAY"),
        avif_codec=values["AVIF_CODEC"] if values["AVIF_CODEC"] in AVIF_CODECS else "svt",
        focal_point=_focal_mode(values["FOCAL_POINT"]),
        worker_memory_budget=_int_or_default(values, "WORKER_MEMORY_BUDGET", minimum=1),
        time_limit=_int_or_default(values, "TIME_LIMIT", minimum=1),
        problems=tuple(problems),
    )


def _focal_mode(value: object) -> FocalMode:
    modes = {str(mode) for mode in FocalMode}
    return FocalMode(value) if isinstance(value, str) and value in modes else FocalMode.AUTO


def _int_or_default(values: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    value = values[key]
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    return int(value) if valid else int(DEFAULTS[key])


def _str_or_default(values: Mapping[str, Any], key: str) -> str:
    value = values[key]
    return value if isinstance(value, str) and value else str(DEFAULTS[key])


def _check_scalars(values: Mapping[str, Any], problems: list[Problem]) -> None:
    for key in _NON_NEGATIVE_INTS:
        value = values[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(
                Problem(
                    "rendition_worker.E003",
                    f"{SETTING}[{key!r}] must be a whole number >= 0, not {value!r}",
                    f"Set it to a number of {'pixels' if key == 'MAX_PIXELS' else 'seconds'}.",
                )
            )
    for key in _POSITIVE_INTS:
        value = values[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            unit = _UNITS.get(key, "seconds")
            problems.append(
                Problem(
                    "rendition_worker.E003",
                    f"{SETTING}[{key!r}] must be a whole number >= 1, not {value!r}",
                    f"Set it to a number of {unit} (default {DEFAULTS[key]}).",
                )
            )
    for key in _NON_EMPTY_STRINGS:
        if not isinstance(values[key], str) or not values[key]:
            problems.append(
                Problem(
                    "rendition_worker.E003",
                    f"{SETTING}[{key!r}] must be a non-empty string, not {values[key]!r}",
                    "Name a queue or a cache alias.",
                )
            )
    if values["QUEUE"] == values["BULK_QUEUE"] and isinstance(values["QUEUE"], str):
        problems.append(
            Problem(
                "rendition_worker.E009",
                f"{SETTING}['QUEUE'] and ['BULK_QUEUE'] are both {values['QUEUE']!r}: "
                "a backfill would delay every fresh upload",
                "Give the bulk lane its own queue, e.g. 'renditions.bulk' (the default).",
            )
        )
    path = values["PATH"]
    if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
        problems.append(
            Problem(
                "rendition_worker.E003",
                f"{SETTING}['PATH'] must be a relative folder name, not {path!r}",
                "Use a prefix such as 'renditions'; every rendition file is stored under it.",
            )
        )
    if values["STORAGE"] is not None and not isinstance(values["STORAGE"], str):
        problems.append(
            Problem(
                "rendition_worker.E003",
                f"{SETTING}['STORAGE'] must be a STORAGES alias or None",
                "Use None to store renditions beside their source field's files.",
            )
        )
    if values["AVIF_CODEC"] not in AVIF_CODECS:
        problems.append(
            Problem(
                "rendition_worker.E003",
                f"{SETTING}['AVIF_CODEC'] must be one of {', '.join(AVIF_CODECS)}, "
                f"not {values['AVIF_CODEC']!r}",
                "SVT-AV1 ('svt') is the fastest at about the same size and quality.",
            )
        )
    modes = [str(mode) for mode in FocalMode]
    if not isinstance(values["FOCAL_POINT"], str) or values["FOCAL_POINT"] not in modes:
        problems.append(
            Problem(
                "rendition_worker.E003",
                f"{SETTING}['FOCAL_POINT'] must be one of {', '.join(modes)}, "
                f"not {values['FOCAL_POINT']!r}",
                "'auto' places crops on the subject it finds in each image, 'centre' in the "
                "middle; a focal point set on an image wins over both.",
            )
        )


def _parse_sets(raw: object, problems: list[Problem]) -> dict[str, tuple[Spec, ...]]:
    if not isinstance(raw, Mapping):
        problems.append(
            Problem(
                "rendition_worker.E004",
                f"{SETTING}['SETS'] must be a dict of set name -> definition",
                "For example {'hero': {'widths': [640, 1280], 'formats': ['avif', 'jpeg']}}.",
            )
        )
        return {}
    sets: dict[str, tuple[Spec, ...]] = {}
    for name, definition in raw.items():
        try:
            sets[str(name)] = expand_set(str(name), definition)
        except InvalidSpec as exc:
            problems.append(
                Problem(
                    "rendition_worker.E004",
                    str(exc),
                    "Fix the set definition: widths and formats, an optional ratio 'W:H', "
                    "or specs.",
                )
            )
    return sets


def _parse_fields(
    raw: object,
    sets: Mapping[str, tuple[Spec, ...]],
    declared: set[str] | None,
    problems: list[Problem],
) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        problems.append(
            Problem(
                "rendition_worker.E005",
                f"{SETTING}['FIELDS'] must be a dict of 'app_label.Model.field' -> set names",
                "For example {'gallery.Photo.image': ['hero', 'thumb']}.",
            )
        )
        return {}
    fields: dict[str, tuple[str, ...]] = {}
    for key, names in raw.items():
        if isinstance(names, str) or not isinstance(names, list | tuple):
            problems.append(
                Problem(
                    "rendition_worker.E005",
                    f"FIELDS[{key!r}] must be a list of set names, not {names!r}",
                    f"Write FIELDS[{key!r}] = [{names!r}] for a single set.",
                )
            )
            continue
        for name in names:
            if declared is not None and name not in declared:
                problems.append(
                    Problem(
                        "rendition_worker.E005",
                        f"FIELDS[{key!r}] uses the unknown set {name!r}",
                        f"Define it in SETS (defined: {', '.join(sets) or 'none'}).",
                    )
                )
        fields[str(key)] = tuple(str(name) for name in names if name in sets)
    return fields
