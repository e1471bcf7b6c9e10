"""Content-addressed names: deterministic, distinct per input, and recognised back."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rendition_worker.core.encoding import EncoderSettings
from rendition_worker.core.naming import (
    parse_rendition_name,
    rendition_name,
    slug_stem,
    source_key,
    source_prefix,
)
from rendition_worker.core.specs import FORMATS, parse_spec

DIGEST = hashlib.sha256(b"the original bytes").hexdigest()
KEY = source_key("gallery.photo:42:image", DIGEST)
FINGERPRINT = EncoderSettings().fingerprint
SPEC = parse_spec("width-640|format-avif")


def name_of(**changes: object) -> str:
    arguments: dict[str, object] = {
        "path": "renditions",
        "key": KEY,
        "source_name": "photos/Sunset at the Beach.JPG",
        "spec": SPEC,
        "output_format": "avif",
        "fingerprint": FINGERPRINT,
    }
    arguments.update(changes)
    return rendition_name(**arguments)  # type: ignore[arg-type]


def test_name_layout_is_readable_and_sharded() -> None:
    name = name_of()
    assert name == (
        f"renditions/{KEY[:2]}/{KEY}/sunset-at-the-beach.width-640.format-avif.{FINGERPRINT}.avif"
    )
    assert name.startswith(source_prefix("renditions", KEY))


def test_same_inputs_give_the_same_name() -> None:
    assert name_of() == name_of()
    assert source_key("gallery.photo:42:image", DIGEST) == KEY


@pytest.mark.parametrize(
    "changed",
    [
        {"key": source_key("gallery.photo:43:image", DIGEST)},  # another row, same file
        {"key": source_key("gallery.photo:42:thumb", DIGEST)},  # another field
        {"key": source_key("gallery.photo:42:image", "0" * 64)},  # replaced content
        {"spec": parse_spec("width-641|format-avif")},
        {"spec": parse_spec("width-640|format-avif|avifquality-30")},
        {"fingerprint": EncoderSettings(avif_codec="aom").fingerprint},
        {"fingerprint": EncoderSettings(avif_speed=6).fingerprint},
    ],
)
def test_every_input_that_changes_bytes_changes_the_name(changed: dict[str, object]) -> None:
    assert name_of(**changed) != name_of()


@pytest.mark.parametrize(
    ("source_name", "stem"),
    [
        ("photos/Sunset at the Beach.JPG", "sunset-at-the-beach"),
        ("../../etc/passwd", "passwd"),
        ("/abs/path/IMG_0001.jpeg", "img_0001"),
        ("C:\\Users\\me\\Été à Paris.png", "ete-a-paris"),
        ("ctrl\x00\x1b[31m\nname.gif", "ctrl-31m-name"),
        ("写真.jpg", "image"),
        (".hidden", "hidden"),
        ("", "image"),
        ("a" * 300 + ".jpg", "a" * 40),
        ("long-" + "é" * 300 + ".jpg", "long-" + "e" * 35),
    ],
)
def test_stems_are_short_safe_slugs(source_name: str, stem: str) -> None:
    assert slug_stem(source_name) == stem
    name = name_of(source_name=source_name)
    assert ".." not in name and "//" not in name and not name.startswith("/")
    assert parse_rendition_name(name, "renditions") is not None


def test_parse_reads_back_every_part() -> None:
    parsed = parse_rendition_name(name_of(), "renditions")
    assert parsed is not None
    assert (parsed.source_key, parsed.stem, parsed.spec) == (KEY, "sunset-at-the-beach", SPEC)
    assert (parsed.fingerprint, parsed.format) == (FINGERPRINT, "avif")


def test_spec_without_format_takes_the_rendered_format() -> None:
    spec = parse_spec("fill-200x200-c50")
    parsed = parse_rendition_name(name_of(spec=spec, output_format="jpeg"), "renditions")
    assert parsed is not None
    assert (parsed.spec, parsed.format) == (spec, "jpeg")
    assert name_of(spec=spec, output_format="jpeg").endswith(".jpg")


@pytest.mark.parametrize("path", ["renditions", "/renditions/", "media/r", ""])
def test_any_prefix_round_trips(path: str) -> None:
    name = name_of(path=path)
    parsed = parse_rendition_name(name, path)
    assert parsed is not None and parsed.source_key == KEY


GOOD = name_of()


@pytest.mark.parametrize(
    "name",
    [
        "renditions/photo.jpg",
        "original_images/photo.jpg",
        GOOD.replace("renditions/", "other/"),
        GOOD.replace(f"/{KEY[:2]}/", "/zz/"),  # shard does not match the key
        GOOD.replace(KEY, KEY[:-1]),  # short key
        GOOD.replace(KEY, KEY.upper()),
        GOOD.replace(".avif", ".gif"),
        GOOD.replace(".avif", ".webp"),  # spec says avif, file says webp
        GOOD.replace("width-640", "width-0640"),  # not canonical
        GOOD.replace("width-640.format-avif", "format-avif.width-640"),  # not canonical
        GOOD.replace("width-640", "wide-640"),
        GOOD.replace(FINGERPRINT, "nothex!!"),
        GOOD + ".tmp",
        GOOD.replace("sunset-at-the-beach", "Sunset"),
        GOOD.replace("renditions/", "renditions/../"),
    ],
)
def test_foreign_names_are_not_ours(name: str) -> None:
    assert parse_rendition_name(name, "renditions") is None


@given(
    identity=st.text(min_size=1, max_size=40),
    source_name=st.text(max_size=80),
    width=st.integers(min_value=1, max_value=16383),
    fmt=st.sampled_from(FORMATS),
)
def test_round_trip_for_any_source(identity: str, source_name: str, width: int, fmt: str) -> None:
    key = source_key(identity, DIGEST)
    spec = parse_spec(f"width-{width}|format-{fmt}")
    name = rendition_name(
        path="renditions",
        key=key,
        source_name=source_name,
        spec=spec,
        output_format=fmt,
        fingerprint=FINGERPRINT,
    )
    parsed = parse_rendition_name(name, "renditions")
    assert parsed is not None
    assert (parsed.source_key, parsed.spec, parsed.format) == (key, spec, fmt)
