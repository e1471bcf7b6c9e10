"""One table of template cases, rendered by Django's templates and by the Jinja2 extension.

`rendition_worker.contrib.jinja2.renditions` promises the same arguments and the same markup
as the template tags: each case is written once for each engine and both must render the
same, and what they render is checked (parsed back, as test_templatetags.py does).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.template import Context, Template
from django.template.backends.jinja2 import Jinja2

from rendition_worker.models import State
from tests.django.test_reading import isolate_cache_and_media, photos_without_signals, record
from tests.django.test_templatetags import HERO, PREVIEW, THUMB, Tags, with_placeholder

pytestmark = pytest.mark.django_db

JINJA = Jinja2(
    {
        "NAME": "jinja2",
        "DIRS": [],
        "APP_DIRS": False,
        "OPTIONS": {"extensions": ["rendition_worker.contrib.jinja2.renditions"]},
    }
)


@pytest.fixture(autouse=True)
def own_cache_and_media(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> None:
    """A cache and a MEDIA_ROOT of this test's own."""
    isolate_cache_and_media(request, settings, tmp_path)


def ready_photo() -> Any:
    (photo,) = photos_without_signals("photos/a.jpg")
    record([photo])
    with_placeholder([photo])
    return photo


def pending_photo() -> Any:
    (photo,) = photos_without_signals("photos/p.jpg")
    record([photo], [HERO[0]], source_state=State.PENDING)
    with_placeholder([photo])
    return photo


def empty_photo() -> Any:
    (photo,) = photos_without_signals("")
    return photo


def picture_parts(html: str) -> list[str]:
    return Tags(html).names()


# (case, photo, Django template, Jinja2 template, check of the rendered output)
CASES: list[tuple[str, Callable[[], Any], str, str, Callable[[str, Any], None]]] = [
    (
        "picture every format",
        ready_photo,
        '{% picture p.image "hero" alt="A dog" class="wide" %}',
        '{{ picture(p.image, "hero", alt="A dog", class="wide") }}',
        lambda html, p: (
            Tags(html).names() == ["picture", "source", "source", "img"]
            and Tags(html).one("img")["class"] == "wide"
            and Tags(html).one("img")["style"] == "background-color:#3a5f0b"
        ),
    ),
    (
        "picture escapes",
        ready_photo,
        '{% picture p.image "hero" alt=hostile %}',
        '{{ picture(p.image, "hero", alt=hostile) }}',
        lambda html, p: "<script" not in html and Tags(html).one("img")["alt"] == HOSTILE,
    ),
    (
        "picture attributes",
        ready_photo,
        '{% picture p.image "hero" loading="eager" data-id=p.pk hidden=True title=None %}',
        '{{ picture(p.image, "hero", loading="eager", attrs={"data-id": p.pk}, hidden=True,'
        " title=None) }}",
        lambda html, p: (
            Tags(html).one("img")["loading"] == "eager"
            and Tags(html).one("img")["data-id"] == str(p.pk)
            and Tags(html).one("img")["hidden"] is None
            and "title" not in Tags(html).one("img")
        ),
    ),
    (
        "picture blur",
        ready_photo,
        '{% picture p.image "hero" placeholder="blur" sizes="50vw" %}',
        '{{ picture(p.image, "hero", placeholder="blur", sizes="50vw") }}',
        lambda html, p: (
            PREVIEW in (Tags(html).one("img")["style"] or "")
            and Tags(html).one("img")["sizes"] == "50vw"
        ),
    ),
    (
        "picture no placeholder",
        ready_photo,
        '{% picture p.image "hero" placeholder="none" %}',
        '{{ picture(p.image, "hero", placeholder="none") }}',
        lambda html, p: "style" not in Tags(html).one("img"),
    ),
    (
        "picture pending",
        pending_photo,
        '{% picture p.image "hero" alt="x" %}',
        '{{ picture(p.image, "hero", alt="x") }}',
        lambda html, p: (
            Tags(html).names() == ["img"]
            and Tags(html).one("img")["src"] == p.image.url
            and Tags(html).one("img")["width"] == "300"
        ),
    ),
    (
        "picture thumb set",
        ready_photo,
        '{% picture p.image "thumb" %}',
        '{{ picture(p.image, "thumb") }}',
        lambda html, p: Tags(html).names() == ["picture", "img"],
    ),
    (
        "empty field and missing variable",
        empty_photo,
        '{% picture p.image "hero" %}|{% rendition_url p.image "fill-64x64|format-webp" %}'
        '|{% srcset p.image "hero" "avif" %}|{% picture missing "hero" %}',
        '{{ picture(p.image, "hero") }}|{{ rendition_url(p.image, "fill-64x64|format-webp") }}'
        '|{{ srcset(p.image, "hero", "avif") }}|{{ picture(missing, "hero") }}',
        lambda html, p: html == "|||",
    ),
    (
        "rendition_url ready",
        ready_photo,
        '{% rendition_url p.image "format-webp|fill-64x64" %}',
        '{{ rendition_url(p.image, "format-webp|fill-64x64") }}',
        lambda html, p: html.startswith("/media/renditions/") and html.endswith(".webp"),
    ),
    (
        "rendition_url pending",
        pending_photo,
        f'{{% rendition_url p.image "{THUMB}" %}}',
        f'{{{{ rendition_url(p.image, "{THUMB}") }}}}',
        lambda html, p: html == p.image.url,
    ),
    (
        "srcset",
        ready_photo,
        '{% srcset p.image "hero" "avif" %}',
        '{{ srcset(p.image, "hero", "avif") }}',
        lambda html, p: [entry.split(" ")[1] for entry in html.split(", ")] == ["160w", "320w"],
    ),
]
HOSTILE = '"><script>alert(1)</script>'


@pytest.mark.parametrize(
    ("make", "django_source", "jinja_source", "check"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_both_engines_render_the_same_markup(
    make: Callable[[], Any],
    django_source: str,
    jinja_source: str,
    check: Callable[[str, Any], bool],
) -> None:
    photo = make()
    context = {"p": photo, "hostile": HOSTILE}
    from_django = Template("{% load renditions %}" + django_source).render(Context(context))
    from_jinja = JINJA.from_string(jinja_source).render(context)
    assert from_jinja == from_django
    assert check(from_django, photo)


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ('{{ picture(p.image, "hero", srcset="x") }}', TypeError, "computes srcset"),
        ('{{ rendition_url(p.image, "width-160", alt="x") }}', TypeError, "'alt'"),
        ('{{ srcset(p.image, "hero", "avif", sizes="1px") }}', TypeError, "'sizes'"),
        ("{{ picture(p.image) }}", TypeError, "set_name"),
        ('{{ picture(p.image, "cards") }}', ValueError, "set 'cards' is not configured"),
        ('{{ picture(p.image, "hero", placeholder="blurry") }}', ValueError, "not one of"),
        ('{{ srcset(p.image, "hero", "jpg") }}', ValueError, "unknown format 'jpg'"),
        ('{{ rendition_url(p.image, "width-1000") }}', ValueError, "not in the sets"),
    ],
)
def test_bad_arguments_to_the_jinja2_globals_are_clear_errors(
    source: str, error: type[Exception], message: str
) -> None:
    photo = ready_photo()
    with pytest.raises(error, match=message):
        JINJA.from_string(source).render({"p": photo})
