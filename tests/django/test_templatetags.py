"""`{% load renditions %}`: `{% picture %}`, `{% rendition_url %}`, `{% srcset %}`.

The markup is parsed back with `html.parser`, never compared as a string. Rows are written
as a worker would (see test_reading.py); one test renders what a real worker made.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import default_storage
from django.template import Context, Template, TemplateSyntaxError

import rendition_worker
from rendition_worker.models import Rendition, State
from rendition_worker.services.generation import source_generate
from tests.django.test_reading import (
    fresh,
    isolate_cache_and_media,
    photos_without_signals,
    record,
    stored_file,
)
from tests.live_worker import WorkerTracker, jpeg_bytes, upload, wait_for
from tests.testapp.models import Photo, Plain

HERO = [
    "width-160|format-avif",
    "width-160|format-webp",
    "width-160|format-jpeg",
    "width-320|format-avif",
    "width-320|format-webp",
    "width-320|format-jpeg",
]
THUMB = "fill-64x64|format-webp"


@pytest.fixture(autouse=True)
def own_cache_and_media(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> None:
    """A cache and a MEDIA_ROOT of this test's own."""
    isolate_cache_and_media(request, settings, tmp_path)


class Tags(HTMLParser):
    """The start tags of a fragment, in order, with their attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ends: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.ends.append(tag)

    def names(self) -> list[str]:
        return [tag for tag, _ in self.tags]

    def one(self, name: str) -> dict[str, str | None]:
        (found,) = [attrs for tag, attrs in self.tags if tag == name]
        return found


def render(text: str, **context: Any) -> str:
    return Template("{% load renditions %}" + text).render(Context(context))


def srcset_entries(value: str | None) -> list[tuple[str, int]]:
    """`URL 160w, URL 320w` as [(URL, 160), (URL, 320)]."""
    assert value
    entries = []
    for candidate in value.split(", "):
        url, descriptor = candidate.split(" ")
        assert descriptor.endswith("w")
        entries.append((url, int(descriptor[:-1])))
    return entries


def urls_of(renditions: dict[str, Any], *specs: str) -> list[tuple[str, int]]:
    return [(renditions[spec].url, renditions[spec].width) for spec in specs]


@pytest.mark.django_db
def test_picture_lists_every_ready_format_with_sorted_srcsets() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    ready = rendition_worker.get_renditions(photo.image)

    html = render('{% picture photo.image "hero" alt="A dog" class="wide" %}', photo=photo)

    tags = Tags(html)
    assert tags.names() == ["picture", "source", "source", "img"]
    assert tags.ends == ["picture"]
    avif, webp = (attrs for tag, attrs in tags.tags if tag == "source")
    assert avif["type"] == "image/avif"
    assert srcset_entries(avif["srcset"]) == urls_of(ready, HERO[0], HERO[3])
    assert webp["type"] == "image/webp"
    assert srcset_entries(webp["srcset"]) == urls_of(ready, HERO[1], HERO[4])
    assert avif["sizes"] == webp["sizes"] == "100vw"
    img = tags.one("img")
    assert srcset_entries(img["srcset"]) == urls_of(ready, HERO[2], HERO[5])
    assert img == {
        "src": ready[HERO[5]].url,
        "srcset": img["srcset"],
        "sizes": "100vw",
        "width": "320",
        "height": "240",
        "alt": "A dog",
        "loading": "lazy",
        "decoding": "async",
        "class": "wide",
    }


@pytest.mark.django_db
def test_picture_lists_only_ready_formats_and_sorts_by_width() -> None:
    (photo,) = photos_without_signals(stored_file())
    # Written largest first, with the AVIF still being encoded.
    record([photo], [HERO[5], HERO[4], HERO[2], HERO[1], HERO[3]])
    Rendition.objects.filter(format="avif").update(state=State.PENDING)

    tags = Tags(render('{% picture photo.image "hero" sizes="50vw" %}', photo=photo))

    assert tags.names() == ["picture", "source", "img"]
    source = tags.one("source")
    assert source["type"] == "image/webp"
    assert [width for _, width in srcset_entries(source["srcset"])] == [160, 320]
    assert source["sizes"] == "50vw"
    img = tags.one("img")
    assert [width for _, width in srcset_entries(img["srcset"])] == [160, 320]
    assert (img["sizes"], img["alt"]) == ("50vw", "")


@pytest.mark.django_db
def test_picture_escapes_what_it_is_given() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    hostile = '"><script>alert(1)</script>'

    html = render(
        '{% picture photo.image "hero" alt=alt class=alt data-caption=alt %}',
        photo=photo,
        alt=hostile,
    )

    assert "<script" not in html
    tags = Tags(html)
    assert tags.names() == ["picture", "source", "source", "img"]
    img = tags.one("img")
    assert img["alt"] == img["class"] == img["data-caption"] == hostile


@pytest.mark.django_db
def test_picture_extra_attributes_go_on_the_img_and_may_replace_its_defaults() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])

    html = render(
        '{% picture photo.image "hero" loading="eager" fetchpriority="high" data-id=photo.pk '
        "hidden=True title=None %}",
        photo=photo,
    )

    tags = Tags(html)
    img = tags.one("img")
    assert img["loading"] == "eager"
    assert img["fetchpriority"] == "high"
    assert img["data-id"] == str(photo.pk)
    assert img["hidden"] is None  # a bare boolean attribute
    assert "title" not in img
    assert all("data-id" not in attrs for tag, attrs in tags.tags if tag == "source")


@pytest.mark.django_db
def test_picture_shows_the_original_while_its_fallback_is_pending() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo], [HERO[0], HERO[3]])  # only AVIF: no <img> fallback yet

    html = render('{% picture photo.image "hero" alt="A dog" class="wide" %}', photo=photo)

    tags = Tags(html)
    assert tags.names() == ["img"]
    # No width/height: the cheap ones are the stored size, not the EXIF-upright one.
    assert tags.one("img") == {
        "src": photo.image.url,
        "alt": "A dog",
        "loading": "lazy",
        "decoding": "async",
        "class": "wide",
    }
    assert default_storage.exists(photo.image.name)


@pytest.mark.django_db
def test_a_set_without_jpeg_uses_its_own_format_for_the_img() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo], [THUMB])

    tags = Tags(render('{% picture photo.image "thumb" alt="" %}', photo=photo))

    assert tags.names() == ["picture", "img"]
    img = tags.one("img")
    thumb = rendition_worker.get_rendition(photo.image, THUMB)
    assert thumb is not None
    assert img["src"] == thumb.url
    assert (img["width"], img["height"]) == ("64", "64")


@pytest.mark.django_db
def test_equal_widths_of_a_small_source_are_listed_once() -> None:
    (photo,) = photos_without_signals(stored_file())
    # A 150 px wide source: width-160 and width-320 both come out 150 px wide.
    record([photo], HERO, source=(150, 100))

    tags = Tags(render('{% picture photo.image "hero" %}', photo=photo))

    for tag, attrs in tags.tags:
        if tag != "picture":
            assert [width for _, width in srcset_entries(attrs["srcset"])] == [150]
    assert tags.one("img")["width"] == "150"


@pytest.mark.django_db
def test_an_empty_field_renders_nothing(django_assert_num_queries: Any) -> None:
    (photo,) = photos_without_signals("")
    with django_assert_num_queries(0):
        html = render(
            '{% picture photo.image "hero" %}'
            '|{% rendition_url photo.image "fill-64x64|format-webp" %}'
            '|{% srcset photo.image "hero" "avif" %}|{% picture missing "hero" %}',
            photo=photo,
        )
    assert html == "|||"


@pytest.mark.django_db
def test_sets_and_specs_outside_the_field_are_developer_errors() -> None:
    (photo,) = photos_without_signals(stored_file())
    (plain,) = photos_without_signals("plain/a.jpg", model=Plain)
    with pytest.raises(ValueError, match=r"set 'card' is not configured for testapp\.Photo\.image"):
        render('{% picture photo.image "card" %}', photo=photo)
    with pytest.raises(ValueError, match=r"set 'hero' is not configured for testapp\.Photo\.cover"):
        render('{% srcset photo.cover "hero" "avif" %}', photo=Photo(pk=photo.pk, cover="c.jpg"))
    with pytest.raises(ValueError, match="not in the sets"):
        render('{% rendition_url photo.image "width-1000" %}', photo=photo)
    with pytest.raises(ValueError, match="unknown format 'jpg'"):
        render('{% srcset photo.image "hero" "jpg" %}', photo=photo)
    with pytest.raises(ValueError, match=r"testapp\.Plain\.image is not a registered field"):
        render('{% picture plain.image "hero" %}', plain=plain)
    for bad in (
        "{% picture photo.image %}",
        '{% picture photo.image alt="x" %}',
        '{% picture photo.image "hero" "extra" %}',
        '{% picture photo.image "hero" src="x.jpg" %}',
        '{% picture photo.image "hero" alt="a" alt="b" %}',
    ):
        with pytest.raises(TemplateSyntaxError):
            render(bad, photo=photo)


@pytest.mark.django_db
def test_rendition_url_is_the_rendition_once_ready_and_the_original_until_then() -> None:
    (photo,) = photos_without_signals(stored_file())
    assert (
        render('{% rendition_url p.image "format-webp|fill-64x64" %}', p=photo) == photo.image.url
    )

    # The service the worker's task runs, in this thread: it also drops the cached "pending".
    source_generate("testapp.photo", str(photo.pk), "image", photo.image.name)
    thumb = rendition_worker.get_rendition(fresh(photo).image, THUMB)
    assert thumb is not None
    assert default_storage.exists(thumb.name)
    assert (
        render('{% rendition_url p.image "format-webp|fill-64x64" %}', p=fresh(photo)) == thumb.url
    )
    assert (
        render(
            '{% rendition_url p.image "fill-64x64|format-webp" as url %}<a href="{{ url }}">',
            p=fresh(photo),
        )
        == f'<a href="{thumb.url}">'
    )


@pytest.mark.django_db
def test_srcset_lists_one_format_of_a_set() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo], [HERO[3], HERO[0], HERO[2]])
    ready = rendition_worker.get_renditions(photo.image)

    html = render(
        '{% srcset p.image "hero" "avif" %}|{% srcset p.image "hero" "webp" %}'
        '|{% srcset p.image "hero" "jpeg" %}',
        p=photo,
    )

    avif, webp, jpeg = html.split("|")
    assert srcset_entries(avif) == urls_of(ready, HERO[0], HERO[3])
    assert webp == ""
    assert srcset_entries(jpeg) == urls_of(ready, HERO[2])


@pytest.mark.django_db
def test_a_page_of_fifty_pictures_costs_two_queries_then_none(
    django_assert_max_num_queries: Any, django_assert_num_queries: Any
) -> None:
    photos = photos_without_signals(*(f"photos/page-{index}.jpg" for index in range(50)))
    record(photos)
    page = Template(
        '{% load renditions %}{% for p in photos %}{% picture p.image "hero" alt=p.title %}'
        '{% rendition_url p.image "fill-64x64|format-webp" %}{% endfor %}'
    )
    ContentType.objects.clear_cache()  # the first request of a process pays for it too

    photos = list(Photo.objects.filter(pk__in=[p.pk for p in photos]).order_by("pk"))
    with django_assert_max_num_queries(2) as cold:
        rendition_worker.prefetch_renditions(photos, "image")
        html = page.render(Context({"photos": photos}))
    tags = Tags(html)
    assert tags.names() == ["picture", "source", "source", "img"] * 50
    assert len(cold.captured_queries) == 2

    again = list(Photo.objects.filter(pk__in=[p.pk for p in photos]).order_by("pk"))
    with django_assert_num_queries(0):
        rendition_worker.prefetch_renditions(again, "image")
        assert page.render(Context({"photos": again})) == html

    # Even without prefetching, a warm cache serves every picture without a query.
    unprefetched = list(Photo.objects.filter(pk__in=[p.pk for p in photos]).order_by("pk"))
    with django_assert_num_queries(0):
        assert page.render(Context({"photos": unprefetched})) == html


def test_picture_of_what_the_worker_made_points_at_real_files(
    worker: WorkerTracker, settings: Any
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes((400, 300)), "dog.jpg"))
    pending = Tags(render('{% picture p.image "hero" alt="A dog" %}', p=photo))
    # Unless the worker has been quicker than this line, the page shows the original.
    assert pending.names() in (["img"], ["picture", "source", "source", "img"])

    wait_for(lambda: rendition_worker.get_status(fresh(photo).image).state == "ready", what="ready")
    photo = fresh(photo)
    html = render(
        '{% picture p.image "hero" alt="A dog" %}{% picture p.image "thumb" %}'
        '<img src="{% rendition_url p.image "fill-64x64|format-webp" %}">',
        p=photo,
    )

    tags = Tags(html)
    assert tags.names() == ["picture", "source", "source", "img", "picture", "img", "img"]
    urls = set()
    for _, attrs in tags.tags:
        if attrs.get("srcset"):
            entries = srcset_entries(attrs["srcset"])
            assert [width for _, width in entries] in ([160, 320], [64])
            urls |= {url for url, _ in entries}
        if src := attrs.get("src"):
            urls.add(src)
    assert [attrs["type"] for tag, attrs in tags.tags if tag == "source"] == [
        "image/avif",
        "image/webp",
    ]
    assert (tags.tags[3][1]["width"], tags.tags[3][1]["height"]) == ("320", "240")
    assert len(urls) == 7  # 6 hero renditions + the thumb
    for url in urls:
        assert url.startswith(settings.MEDIA_URL + "renditions/")
        path = Path(settings.MEDIA_ROOT) / unquote(url.removeprefix(settings.MEDIA_URL))
        assert path.is_file(), url


# Placeholders (DESIGN.md "Crops, placeholders, APIs and Jinja2")

PREVIEW = "data:image/webp;base64,UklGRkIAAABXRUJQVlA4IDYAAADQAQCdASoEAAMAAUAmJYgCdAEO"


def with_placeholder(photos: list[Any], color: str = "#3a5f0b") -> None:
    """Record the placeholder a worker records at the start of a render (upright 300x400)."""
    from rendition_worker.models import Source

    Source.objects.filter(object_id__in=[str(p.pk) for p in photos]).update(
        placeholder_color=color, placeholder_uri=PREVIEW, width=300, height=400
    )


@pytest.mark.django_db
def test_picture_paints_the_placeholder_colour_by_default_blur_or_none_on_request() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    with_placeholder([photo])

    painted = {
        kind: Tags(render(f'{{% picture p.image "hero" {kind} %}}', p=photo)).one("img")
        for kind in ("", 'placeholder="color"', 'placeholder="blur"', 'placeholder="none"')
    }
    assert painted[""]["style"] == "background-color:#3a5f0b"
    assert painted['placeholder="color"'] == painted[""]
    assert painted['placeholder="blur"']["style"] == (
        f"background-color:#3a5f0b;background-image:url({PREVIEW});background-size:cover"
    )
    assert "style" not in painted['placeholder="none"']
    assert all("placeholder" not in attrs for attrs in painted.values())
    # A style of the template's own comes after the placeholder's, so it can override it.
    styled = Tags(render('{% picture p.image "hero" style="border:0" %}', p=photo)).one("img")
    assert styled["style"] == "background-color:#3a5f0b;border:0"


@pytest.mark.django_db
def test_a_pending_picture_gets_the_placeholder_and_the_upright_size() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo], [HERO[0]], source_state=State.PENDING)  # no <img> fallback yet
    with_placeholder([photo])

    img = Tags(render('{% picture p.image "hero" alt="A dog" %}', p=photo)).one("img")
    assert img == {
        "src": photo.image.url,
        "alt": "A dog",
        "width": "300",
        "height": "400",
        "loading": "lazy",
        "decoding": "async",
        "style": "background-color:#3a5f0b",
    }


@pytest.mark.django_db
def test_a_placeholder_that_is_not_the_workers_is_not_written_into_a_style() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    with_placeholder([photo], color="red;a:b")  # 7 characters, as the column allows

    img = Tags(render('{% picture p.image "hero" placeholder="blur" %}', p=photo)).one("img")
    assert img["style"] == f"background-image:url({PREVIEW});background-size:cover"


@pytest.mark.django_db
def test_an_unknown_placeholder_is_a_developer_error() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    with pytest.raises(ValueError, match="placeholder='blurry' is not one of color, blur, none"):
        render('{% picture p.image "hero" placeholder="blurry" %}', p=photo)


@pytest.mark.django_db
def test_a_page_of_placeholders_costs_two_queries_then_none(
    django_assert_num_queries: Any,
) -> None:
    photos = photos_without_signals(*(f"photos/page-{index}.jpg" for index in range(20)))
    record(photos[:10])
    record(photos[10:], [HERO[0]], source_state=State.PENDING)  # half of them still pending
    with_placeholder(photos)
    page = Template(
        '{% load renditions %}{% for p in photos %}{% picture p.image "hero" placeholder="blur" %}'
        "{% endfor %}"
    )
    ContentType.objects.clear_cache()

    def load() -> list[Photo]:
        return list(Photo.objects.filter(pk__in=[p.pk for p in photos]).order_by("pk"))

    listed = load()
    # As for renditions alone: the content type (once per process), then one query for the
    # renditions and the placeholders of the whole page.
    with django_assert_num_queries(2):
        rendition_worker.prefetch_renditions(listed, "image")
        html = page.render(Context({"photos": listed}))
    styles = [attrs.get("style") for tag, attrs in Tags(html).tags if tag == "img"]
    assert len(styles) == 20
    assert all(style and PREVIEW in style for style in styles)

    listed = load()
    with django_assert_num_queries(0):
        rendition_worker.prefetch_renditions(listed, "image")
        assert page.render(Context({"photos": listed})) == html
