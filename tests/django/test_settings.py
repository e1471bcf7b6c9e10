"""The settings object: documented defaults, parsing, caching and reloading on `setting_changed`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from rendition_worker.conf import DEFAULTS, RenditionSettings, get_settings, parse_settings
from rendition_worker.core.specs import parse_spec
from rendition_worker.models import Source, State
from tests.live_worker import WorkerTracker, jpeg_bytes, upload, wait_for, wait_idle
from tests.testapp.models import Photo, Plain

# DESIGN.md, "Settings": the documented default of every key.
DOCUMENTED_DEFAULTS = {
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
    # The README's (DESIGN.md has no such key): MB a worker process may grow by (W002).
    "WORKER_MEMORY_BUDGET": 600,
    "TIME_LIMIT": 300,  # the README's (DESIGN.md: "time limits")
}


def specs(*texts: str) -> tuple[Any, ...]:
    return tuple(parse_spec(text) for text in texts)


# Defaults and parsing


def test_defaults_are_the_documented_ones() -> None:
    assert dict(DEFAULTS) == DOCUMENTED_DEFAULTS
    parsed = parse_settings({})
    assert parsed.problems == ()
    assert (
        parsed.sets,
        parsed.fields,
        parsed.path,
        parsed.storage,
        parsed.delete_originals,
        parsed.max_pixels,
        parsed.queue,
        parsed.reconcile_every,
        parsed.orphan_grace,
        parsed.cache,
        parsed.delete_delay,
        parsed.avif_codec,
        parsed.focal_point,
        parsed.time_limit,
    ) == (
        {},
        {},
        "renditions",
        None,
        True,
        100_000_000,
        "renditions",
        3600,
        3600,
        "default",
        0,
        "svt",
        "auto",
        300,
    )
    assert parsed.encoder.avif_codec == "svt"
    assert parsed.render_options.limits.max_pixels == 100_000_000


def test_sets_expand_and_fields_keep_their_order() -> None:
    parsed = parse_settings(
        {
            "SETS": {
                "card": {"widths": [320, 640], "ratio": "4:3", "formats": ["avif", "jpeg"]},
                "thumb": {"specs": ["format-webp|fill-160x160"]},
            },
            "FIELDS": {"testapp.Photo.image": ["thumb", "card"]},
        }
    )
    assert parsed.problems == ()
    assert parsed.sets["card"] == specs(
        "fill-320x240|format-avif",
        "fill-320x240|format-jpeg",
        "fill-640x480|format-avif",
        "fill-640x480|format-jpeg",
    )
    assert [str(spec) for spec in parsed.sets["thumb"]] == ["fill-160x160|format-webp"]
    assert parsed.fields == {"testapp.Photo.image": ("thumb", "card")}


def test_specs_for_merges_sets_in_order_without_duplicates() -> None:
    parsed = parse_settings(
        {
            "SETS": {
                "a": {"widths": [100, 200], "formats": ["webp"]},
                "b": {"specs": ["format-webp|width-200", "width-300|format-jpeg"]},
                "c": {"specs": ["width-100|format-webp"]},
            },
            "FIELDS": {"testapp.Photo.image": ["b", "a", "c"], "testapp.Photo.cover": ["a"]},
        }
    )
    assert parsed.specs_for("testapp.Photo.image") == specs(
        "width-200|format-webp", "width-300|format-jpeg", "width-100|format-webp"
    )
    assert parsed.specs_for("testapp.Photo.cover") == specs(
        "width-100|format-webp", "width-200|format-webp"
    )
    assert parsed.specs_for("testapp.Poster.image") == ()


def test_set_specs_only_for_a_set_the_field_uses() -> None:
    parsed = parse_settings(
        {
            "SETS": {"a": {"specs": ["width-100"]}, "b": {"specs": ["width-200"]}},
            "FIELDS": {"testapp.Photo.image": ["a"]},
        }
    )
    assert parsed.set_specs("testapp.Photo.image", "a") == specs("width-100")
    with pytest.raises(ValueError, match=r"set 'b' is not configured for testapp\.Photo\.image"):
        parsed.set_specs("testapp.Photo.image", "b")
    with pytest.raises(ValueError, match=r"its sets: a\)"):
        parsed.set_specs("testapp.Photo.image", "nope")
    with pytest.raises(ValueError, match=r"its sets: none\)"):
        parsed.set_specs("testapp.Poster.image", "a")


def test_require_valid_names_the_first_problem() -> None:
    parsed = parse_settings({"SET": {}, "DELETE_DELAY": -1})
    assert [problem.id for problem in parsed.problems] == [
        "rendition_worker.E002",
        "rendition_worker.E003",
    ]
    with pytest.raises(ImproperlyConfigured) as failure:
        parsed.require_valid()
    first = parsed.problems[0]
    assert (
        str(failure.value)
        == f"rendition_worker.E002: unknown key 'SET' in RENDITION_WORKER ({first.hint})"
    )
    valid = parse_settings({})
    assert valid.require_valid() is valid


def test_problems_are_collected_and_values_fall_back() -> None:
    parsed = parse_settings(
        {
            "SETS": {"a": {"specs": ["width-100"]}},
            "FIELDS": {"testapp.Photo.image": ["a", "missing"]},
            "DELETE_DELAY": -5,
            "MAX_PIXELS": "lots",
            "AVIF_CODEC": "x265",
            "PATH": "/media/renditions/",
            "FOCAL_POINT": "center",
        }
    )
    assert len(parsed.problems) == 5
    assert parsed.fields == {"testapp.Photo.image": ("a",)}
    assert parsed.delete_delay == 0
    assert parsed.max_pixels == 100_000_000
    assert parsed.avif_codec == "svt"
    assert parsed.focal_point == "auto"
    assert parsed.path == "media/renditions"


def test_the_settings_object_is_frozen() -> None:
    parsed = parse_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.queue = "other"  # type: ignore[misc]


# Caching and reloading


def test_get_settings_is_parsed_once() -> None:
    assert get_settings() is get_settings()
    assert get_settings().fields == {
        "testapp.Photo.image": ("hero", "thumb"),
        "testapp.Photo.cover": ("thumb",),
        "testapp.Poster.image": ("hero",),
        "demo.Photo.image": ("hero", "thumb"),
    }


def test_an_override_is_seen_and_undone(settings: Any) -> None:
    before = get_settings()
    with override_settings(
        RENDITION_WORKER={**django_settings.RENDITION_WORKER, "DELETE_DELAY": 60}
    ):
        during = get_settings()
        assert during is not before
        assert during.delete_delay == 60
        assert get_settings() is during
    assert get_settings().delete_delay == 0
    settings.RENDITION_WORKER = {**django_settings.RENDITION_WORKER, "PATH": "elsewhere"}
    assert get_settings().path == "elsewhere"


@pytest.mark.parametrize("setting", ["STORAGES", "CACHES"])
def test_alias_settings_reload_too(setting: str, settings: Any) -> None:
    before: RenditionSettings = get_settings()
    setattr(settings, setting, {**getattr(django_settings, setting), "extra": {}})
    assert get_settings() is not before


def test_unrelated_settings_keep_the_cache(settings: Any) -> None:
    before = get_settings()
    settings.USE_I18N = not django_settings.USE_I18N
    assert get_settings() is before


def test_registering_a_field_wires_its_signals(worker: WorkerTracker, settings: Any) -> None:
    unwatched = Plain.objects.create(image=upload(jpeg_bytes(), "before.jpg"))
    wait_idle(worker)
    assert not Source.objects.filter(object_id=str(unwatched.pk)).exists()

    settings.RENDITION_WORKER = {
        **django_settings.RENDITION_WORKER,
        "FIELDS": {**django_settings.RENDITION_WORKER["FIELDS"], "testapp.Plain.image": ["thumb"]},
    }
    plain = Plain.objects.create(image=upload(jpeg_bytes(), "after.jpg"))

    source = wait_for(
        lambda: Source.objects.filter(
            object_id=str(plain.pk), field="image", state=State.READY
        ).first(),
        what="the newly registered field's renditions",
    )
    [rendition] = source.renditions.all()
    assert rendition.spec == "fill-64x64|format-webp"
    assert (rendition.width, rendition.height) == (64, 64)
    assert (Path(settings.MEDIA_ROOT) / rendition.name).is_file()


def test_unregistering_a_field_unwires_its_signals(worker: WorkerTracker, settings: Any) -> None:
    settings.RENDITION_WORKER = {
        **django_settings.RENDITION_WORKER,
        "FIELDS": {"testapp.Poster.image": ["hero"]},
    }
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    wait_idle(worker)
    assert not Source.objects.filter(object_id=str(photo.pk)).exists()
    assert not (Path(settings.MEDIA_ROOT) / "renditions").exists()


def test_time_limit_is_every_tasks_soft_limit_and_the_hard_one_follows(settings: Any) -> None:
    from tests.celery_app import app

    names = ["generate", "delete", "reconcile", "relay"]
    tasks = [app.tasks[f"rendition_worker.{name}"] for name in names]
    assert [(task.soft_time_limit, task.time_limit) for task in tasks] == [(300, 330)] * 4
    settings.RENDITION_WORKER = {**django_settings.RENDITION_WORKER, "TIME_LIMIT": 7}
    assert [(task.soft_time_limit, task.time_limit) for task in tasks] == [(7, 37)] * 4
