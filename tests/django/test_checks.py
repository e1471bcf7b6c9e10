"""System checks: every misconfiguration DESIGN.md lists is reported with its id and a hint.

Each case sets a real bad RENDITION_WORKER through pytest-django's `settings` fixture (the
app reloads on `setting_changed`) and runs the real check framework, both as
`run_checks(tags=[...])` (exact ids) and as `manage.py check` (message and hint printed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from PIL import Image

from rendition_worker.core.encoding import AVIF_CODECS, avif_codec_available, encodable_formats

VALID: Mapping[str, Any] = django_settings.RENDITION_WORKER
SETS: Mapping[str, Any] = VALID["SETS"]
FIELDS: Mapping[str, Any] = VALID["FIELDS"]
FIELD_HINT = "Name an ImageField (or FileField) as 'app_label.Model.field'."

# The example of DESIGN.md's Settings section, pointed at the test app's fields.
DESIGN_EXAMPLE = {
    "SETS": {
        "hero": {"widths": [640, 1280, 1920, 2560], "formats": ["avif", "webp", "jpeg"]},
        "card": {"widths": [320, 640], "ratio": "4:3", "formats": ["avif", "jpeg"]},
        "thumb": {"specs": ["fill-160x160|format-webp"]},
    },
    "FIELDS": {"testapp.Photo.image": ["hero", "thumb"], "testapp.Poster.image": ["card"]},
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
    "FOCAL_POINT": "centre",
}


def with_sets(**sets: Any) -> dict[str, Any]:
    return {**VALID, "SETS": {**SETS, **sets}}


def field(key: str, sets: Any = ("hero",)) -> dict[str, Any]:
    return {**VALID, "FIELDS": {**FIELDS, key: list(sets) if isinstance(sets, tuple) else sets}}


# (case id, RENDITION_WORKER value, expected check ids, text the message must contain)
CASES: list[tuple[str, object, set[str], str]] = [
    # E001: not a dict
    ("not-a-dict-list", ["hero"], {"rendition_worker.E001"}, "must be a dict, not list"),
    ("not-a-dict-str", "hero", {"rendition_worker.E001"}, "must be a dict, not str"),
    ("not-a-dict-none", None, {"rendition_worker.E001"}, "must be a dict, not NoneType"),
    # E002: unknown keys, named
    ("unknown-key", {**VALID, "SET": {}}, {"rendition_worker.E002"}, "unknown key 'SET'"),
    (
        "unknown-key-typo",
        {**VALID, "DELETE_ORIGINAL": False},
        {"rendition_worker.E002"},
        "'DELETE_ORIGINAL'",
    ),
    # E003: scalars
    ("delete-delay-negative", {**VALID, "DELETE_DELAY": -1}, {"rendition_worker.E003"}, "not -1"),
    (
        "delete-delay-bool",
        {**VALID, "DELETE_DELAY": True},
        {"rendition_worker.E003"},
        "['DELETE_DELAY'] must be a whole number >= 0, not True",
    ),
    (
        "max-pixels-string",
        {**VALID, "MAX_PIXELS": "100M"},
        {"rendition_worker.E003"},
        "['MAX_PIXELS'] must be a whole number >= 0, not '100M'",
    ),
    (
        "reconcile-every-float",
        {**VALID, "RECONCILE_EVERY": 1.5},
        {"rendition_worker.E003"},
        "['RECONCILE_EVERY']",
    ),
    ("orphan-grace-negative", {**VALID, "ORPHAN_GRACE": -60}, {"rendition_worker.E003"}, "-60"),
    ("queue-empty", {**VALID, "QUEUE": ""}, {"rendition_worker.E003"}, "['QUEUE'] must be"),
    ("path-parent", {**VALID, "PATH": "../x"}, {"rendition_worker.E003"}, "not '../x'"),
    ("path-parent-inside", {**VALID, "PATH": "a/../b"}, {"rendition_worker.E003"}, "'a/../b'"),
    ("path-empty", {**VALID, "PATH": ""}, {"rendition_worker.E003"}, "not ''"),
    ("path-slash", {**VALID, "PATH": "/"}, {"rendition_worker.E003"}, "not '/'"),
    ("path-none", {**VALID, "PATH": None}, {"rendition_worker.E003"}, "not None"),
    (
        "avif-codec-decoder-only",
        {**VALID, "AVIF_CODEC": "dav1d"},
        {"rendition_worker.E003"},
        "not 'dav1d'",
    ),
    ("avif-codec-unknown", {**VALID, "AVIF_CODEC": "x265"}, {"rendition_worker.E003"}, "'x265'"),
    (
        "focal-point-spelling",
        {**VALID, "FOCAL_POINT": "center"},
        {"rendition_worker.E003"},
        "['FOCAL_POINT'] must be one of auto, centre, not 'center'",
    ),
    ("focal-point-none", {**VALID, "FOCAL_POINT": None}, {"rendition_worker.E003"}, "not None"),
    # E004: sets
    (
        "sets-not-a-dict",
        {**VALID, "SETS": ["hero"], "FIELDS": {}},
        {"rendition_worker.E004"},
        "['SETS']",
    ),
    (
        "set-malformed-spec",
        with_sets(bad={"specs": ["width-abc|format-webp"]}),
        {"rendition_worker.E004"},
        "'width-abc'",
    ),
    (
        "set-unknown-operation",
        with_sets(bad={"specs": ["crop-10x10"]}),
        {"rendition_worker.E004"},
        "'crop-10x10'",
    ),
    (
        "set-two-operations",
        with_sets(bad={"specs": ["width-10|height-10"]}),
        {"rendition_worker.E004"},
        "'height-10' is a second operation",
    ),
    (
        "set-spec-not-a-string",
        with_sets(bad={"specs": [640]}),
        {"rendition_worker.E004"},
        "entry 640 in 'specs' is not a string",
    ),
    (
        "set-unknown-key",
        with_sets(bad={"width": [640], "formats": ["avif"]}),
        {"rendition_worker.E004"},
        "unknown key 'width'",
    ),
    (
        "set-widths-without-formats",
        with_sets(bad={"widths": [640]}),
        {"rendition_worker.E004"},
        "'widths' and 'formats' must be given together",
    ),
    (
        "set-bad-ratio",
        with_sets(bad={"widths": [640], "formats": ["jpeg"], "ratio": "4x3"}),
        {"rendition_worker.E004"},
        "'ratio' '4x3'",
    ),
    (
        "set-unknown-format",
        with_sets(bad={"widths": [640], "formats": ["gif"]}),
        {"rendition_worker.E004"},
        "unknown format 'gif'",
    ),
    (
        "set-zero-width",
        with_sets(bad={"widths": [0], "formats": ["jpeg"]}),
        {"rendition_worker.E004"},
        "width 0",
    ),
    (
        "set-not-a-dict",
        with_sets(bad=["width-640"]),
        {"rendition_worker.E004"},
        "Invalid set 'bad'",
    ),
    ("set-empty", with_sets(bad={}), {"rendition_worker.E004"}, "expands to no specs"),
    # E005: fields naming sets
    ("fields-not-a-dict", {**VALID, "FIELDS": ["x"]}, {"rendition_worker.E005"}, "['FIELDS']"),
    (
        "field-sets-a-string",
        field("testapp.Poster.image", "hero"),
        {"rendition_worker.E005"},
        "must be a list of set names, not 'hero'",
    ),
    (
        "field-unknown-set",
        field("testapp.Poster.image", ("hero", "banner")),
        {"rendition_worker.E005"},
        "unknown set 'banner'",
    ),
    # E006: unresolvable fields
    (
        "field-malformed",
        field("testapp.Photo"),
        {"rendition_worker.E006"},
        "'testapp.Photo' is not of the form 'app_label.Model.field'",
    ),
    (
        "field-unknown-app",
        field("gallery.Photo.image"),
        {"rendition_worker.E006"},
        "No installed app with label 'gallery'",
    ),
    (
        "field-unknown-model",
        field("testapp.Picture.image"),
        {"rendition_worker.E006"},
        "doesn't have a 'Picture' model",
    ),
    (
        "field-unknown-field",
        field("testapp.Photo.picture"),
        {"rendition_worker.E006"},
        "Photo has no field 'picture'",
    ),
    (
        "field-not-a-file-field",
        field("testapp.Photo.title"),
        {"rendition_worker.E006"},
        "testapp.Photo.title is a CharField, not an ImageField or FileField",
    ),
    (
        "field-foreign-key",
        field("testapp.Photo.album"),
        {"rendition_worker.E006"},
        "is a ForeignKey",
    ),
    # E003: the lanes' settings
    (
        "bulk-queue-empty",
        {**VALID, "BULK_QUEUE": ""},
        {"rendition_worker.E003"},
        "['BULK_QUEUE'] must be a non-empty string, not ''",
    ),
    (
        "bulk-max-queued-zero",
        {**VALID, "BULK_MAX_QUEUED": 0},
        {"rendition_worker.E003"},
        "['BULK_MAX_QUEUED'] must be a whole number >= 1, not 0",
    ),
    (
        "relay-after-string",
        {**VALID, "RELAY_AFTER": "60"},
        {"rendition_worker.E003"},
        "['RELAY_AFTER'] must be a whole number >= 1, not '60'",
    ),
    (
        "worker-memory-budget-zero",
        {**VALID, "WORKER_MEMORY_BUDGET": 0},
        {"rendition_worker.E003"},
        "['WORKER_MEMORY_BUDGET'] must be a whole number >= 1, not 0",
    ),
    (
        "worker-memory-budget-text",
        {**VALID, "WORKER_MEMORY_BUDGET": "2GB"},
        {"rendition_worker.E003"},
        "not '2GB'",
    ),
    (
        "time-limit-zero",
        {**VALID, "TIME_LIMIT": 0},
        {"rendition_worker.E003"},
        "['TIME_LIMIT'] must be a whole number >= 1, not 0",
    ),
    (
        "time-limit-float",
        {**VALID, "TIME_LIMIT": 0.5},
        {"rendition_worker.E003"},
        "['TIME_LIMIT'] must be a whole number >= 1, not 0.5",
    ),
    # E009: both lanes on one queue
    (
        "lanes-on-one-queue",
        {**VALID, "BULK_QUEUE": VALID["QUEUE"]},
        {"rendition_worker.E009"},
        "a backfill would delay every fresh upload",
    ),
    # E008: aliases
    (
        "storage-unknown",
        {**VALID, "STORAGE": "s3"},
        {"rendition_worker.E008"},
        "['STORAGE'] is 's3', which is not in STORAGES",
    ),
    (
        "cache-unknown",
        {**VALID, "CACHE": "renditions"},
        {"rendition_worker.E008"},
        "['CACHE'] is 'renditions', which is not in CACHES",
    ),
    # Reported once, as malformed; the default alias stands in for it meanwhile.
    ("cache-empty", {**VALID, "CACHE": ""}, {"rendition_worker.E003"}, "['CACHE'] must be"),
    # A bad STORAGE is reported once (E003), not again as an unknown alias (E008).
    ("storage-not-str", {**VALID, "STORAGE": 5}, {"rendition_worker.E003"}, "['STORAGE']"),
    # A malformed set is reported as itself, not also as "unknown" in the fields using it.
    (
        "malformed-set-in-use",
        {**VALID, "SETS": {**SETS, "hero": {"specs": ["width-abc"]}}},
        {"rendition_worker.E004"},
        "'width-abc'",
    ),
    (
        "sets-not-a-dict-with-fields",
        {**VALID, "SETS": ["hero"]},
        {"rendition_worker.E004"},
        "['SETS']",
    ),
]


def rendition_errors() -> list[CheckMessage]:
    return list(run_checks(tags=["rendition_worker"]))


def manage_py_check() -> str:
    """The output of `manage.py check`, which must fail."""
    with pytest.raises(SystemCheckError) as failure:
        call_command("check")
    return str(failure.value)


@pytest.mark.parametrize(
    ("value", "ids", "text"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_misconfiguration_is_reported(
    value: object, ids: set[str], text: str, settings: Any
) -> None:
    settings.RENDITION_WORKER = value

    errors = rendition_errors()

    assert {error.id for error in errors} == ids
    assert all(error.is_serious() and error.hint for error in errors)
    assert any(text in error.msg for error in errors), [error.msg for error in errors]
    output = manage_py_check()
    for error in errors:
        assert f"({error.id}) {error.msg}" in output
        assert f"HINT: {error.hint}" in output


def test_every_check_id_is_covered() -> None:
    covered = {check_id for _, _, ids, _ in CASES for check_id in ids}
    # E007 needs a Pillow without an encoder: see the tests below.
    assert covered | {"rendition_worker.E007"} == {f"rendition_worker.E00{n}" for n in range(1, 10)}


def test_unknown_key_hint_lists_the_accepted_keys(settings: Any) -> None:
    settings.RENDITION_WORKER = {**VALID, "SET": {}}
    [error] = rendition_errors()
    assert "SETS" in str(error.hint)
    assert "AVIF_CODEC" in str(error.hint)


def test_every_problem_is_reported_at_once(settings: Any) -> None:
    settings.RENDITION_WORKER = {
        "SETS": {"bad": {"specs": ["nope"]}},
        "FIELDS": {"testapp.Photo.nope": ["bad"]},
        "PATH": "..",
        "CACHE": "elsewhere",
        "COLOUR": "blue",
    }
    ids = sorted(error.id or "" for error in rendition_errors())
    assert ids == [
        "rendition_worker.E002",
        "rendition_worker.E003",
        "rendition_worker.E004",
        "rendition_worker.E006",
        "rendition_worker.E008",
    ]


def test_format_this_pillow_cannot_encode(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Pillow build without an AVIF encoder is one without Image.SAVE["AVIF"].
    monkeypatch.delitem(Image.SAVE, "AVIF")
    assert "avif" not in encodable_formats()
    settings.RENDITION_WORKER = {
        "SETS": {"hero": {"widths": [320], "formats": ["avif", "jpeg"]}},
        "FIELDS": {"testapp.Photo.image": ["hero"]},
    }

    errors = rendition_errors()

    assert [error.id for error in errors] == ["rendition_worker.E007"]
    assert "set 'hero' asks for avif (width-320|format-avif)" in errors[0].msg
    assert "drop the format (available: jpeg, png, webp)" in str(errors[0].hint)
    output = manage_py_check()
    assert "(rendition_worker.E007)" in output
    assert "HINT: Install a Pillow with avif support" in output


@pytest.mark.parametrize("codec", AVIF_CODECS)
def test_every_avif_codec_of_this_build_passes(codec: str, settings: Any) -> None:
    # E007's codec branch fires only for a libavif built without the codec; this build has
    # all three, so unusable codec values are tested above as invalid values (E003).
    assert avif_codec_available(codec)
    settings.RENDITION_WORKER = {**VALID, "AVIF_CODEC": codec}
    assert rendition_errors() == []


@pytest.mark.parametrize(
    "value",
    [
        VALID,
        DESIGN_EXAMPLE,
        {},
        {**VALID, "STORAGE": "default"},
        {**VALID, "PATH": "/media/renditions/"},
        {**VALID, "DELETE_DELAY": 600, "MAX_PIXELS": 0},
        field("testapp.Plain.image", ("thumb",)),
    ],
    ids=[
        "test-settings",
        "design-example",
        "empty",
        "storage-alias",
        "path-slashes",
        "ints",
        "more",
    ],
)
def test_valid_settings_pass(value: object, settings: Any) -> None:
    settings.RENDITION_WORKER = value
    assert rendition_errors() == []
    call_command("check")


def test_the_project_passes_manage_py_check() -> None:
    call_command("check")
    assert rendition_errors() == []


@pytest.mark.parametrize(
    ("broker_url", "options", "warned"),
    [
        ("redis://127.0.0.1:6379/0", {}, True),
        ("rediss://cache.example:6380/0", {"queue_order_strategy": "round_robin"}, True),
        ("redis://127.0.0.1:6379/0", {"queue_order_strategy": "sorted"}, True),
        ("redis://127.0.0.1:6379/0", {"queue_order_strategy": "priority"}, False),
        ("amqp://guest@127.0.0.1//", {}, False),  # not Redis: the README says what holds
        ("filesystem://", {}, False),
    ],
)
def test_a_redis_broker_that_would_take_the_lanes_in_turns_is_warned_about(
    broker_url: str, options: dict[str, str], warned: bool
) -> None:
    from celery import Celery

    from rendition_worker.checks import check_lane_order

    app = Celery("site", set_as_current=False)
    app.conf.update(broker_url=broker_url, broker_transport_options=options)
    warnings = check_lane_order(app)
    assert [warning.id for warning in warnings] == (["rendition_worker.W001"] if warned else [])
    if warned:
        assert not warnings[0].is_serious()
        assert "queue_order_strategy" in warnings[0].hint
        assert "fresh uploads wait behind a backfill" in warnings[0].msg


@pytest.mark.parametrize(
    ("max_pixels", "budget", "warned"),
    [
        (100_000_000, None, False),  # the defaults: 100 MP x 6 MB = 600 MB, the budget
        (100_000_001, None, True),
        (250_000_000, None, True),  # 1,500 MB
        (250_000_000, 1_500, False),
        (0, 1, False),
    ],
)
def test_max_pixels_that_needs_more_than_the_memory_budget_is_warned_about(
    max_pixels: int, budget: int | None, warned: bool, settings: Any
) -> None:
    extra = {} if budget is None else {"WORKER_MEMORY_BUDGET": budget}
    settings.RENDITION_WORKER = {**VALID, "MAX_PIXELS": max_pixels, **extra}

    messages = rendition_errors()

    assert [message.id for message in messages] == (["rendition_worker.W002"] if warned else [])
    if warned:
        [warning] = messages
        assert not warning.is_serious()
        assert f"['MAX_PIXELS'] = {max_pixels:,}" in warning.msg
        assert f"about {max_pixels * 6 / 1e6:,.0f} MB" in warning.msg
        assert "more than WORKER_MEMORY_BUDGET (600 MB)" in warning.msg
        assert "Lower MAX_PIXELS to 100,000,000 or less" in str(warning.hint)
        call_command("check")  # a warning: manage.py check still passes
