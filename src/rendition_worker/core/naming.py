"""Deterministic, content-addressed storage names for renditions, and their inverse.

    {PATH}/{key[:2]}/{key}/{stem}.{spec with | as .}.{fingerprint}.{ext}
    renditions/3f/3fa4c1d09b2e7a61/sunset.width-640.format-avif.1a2b3c4d.avif

`key` hashes the source's identity (model, row, field) with its content digest, so two
sources never share a name and a replaced file gets new names; `fingerprint` covers the
encoder settings and pipeline version, and for cropping specs also where the crop is placed
(`spec_fingerprint`: the focal point, or the automatic subject), so that a new focal point
renames the crops and nothing else. A file at a given name therefore never changes
content (safe for `Cache-Control: immutable`), and the reconciler can recognise every file
this scheme made, and only those, by parsing the name back.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from rendition_worker.core.encoding import EXTENSIONS
from rendition_worker.core.errors import InvalidSpec
from rendition_worker.core.specs import Spec, parse_spec

KEY_LENGTH = 16
STEM_MAX_LENGTH = 40
_FORMAT_BY_EXTENSION = {extension: fmt for fmt, extension in EXTENSIONS.items()}
_NAME = re.compile(
    rf"(?P<shard>[0-9a-f]{{2}})/(?P<key>[0-9a-f]{{{KEY_LENGTH}}})"
    rf"/(?P<stem>[a-z0-9_-]{{1,{STEM_MAX_LENGTH}}})"
    r"\.(?P<spec>[a-z0-9-]+(?:\.[a-z0-9-]+)*)\.(?P<fingerprint>[0-9a-f]{8})"
    r"\.(?P<extension>[a-z]+)"
)


@dataclass(frozen=True, slots=True)
class RenditionName:
    """What a storage name of ours says: whose rendition, of what, made how."""

    source_key: str
    stem: str
    spec: Spec
    fingerprint: str
    format: str


# The reconciler asks for every crop row of a million sources; nearly all share a placement.
@functools.lru_cache(maxsize=4096)
def spec_fingerprint(fingerprint: str, spec: Spec, placement: str) -> str:
    """The fingerprint in `spec`'s names: a crop's also hashes its `placement` (if any)."""
    if not placement or not spec.operation.crops:
        return fingerprint
    text = f"{fingerprint}\x00{placement}".encode()
    return hashlib.blake2b(text, digest_size=4).hexdigest()


def source_key(identity: str, digest: str) -> str:
    """The key of one version of one source: hash of its identity and content digest."""
    text = f"{identity}\x00{digest}".encode()
    return hashlib.blake2b(text, digest_size=KEY_LENGTH // 2).hexdigest()


def slug_stem(source_name: str) -> str:
    """A short ASCII slug of a file's base name, for names people can read; never a path."""
    base = source_name.replace("\\", "/").rsplit("/", 1)[-1]
    base = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    ascii_text = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_-]+", "-", ascii_text.lower()).strip("-_")
    return slug[:STEM_MAX_LENGTH].rstrip("-_") or "image"


def rendition_name(
    *,
    path: str,
    key: str,
    source_name: str,
    spec: Spec,
    output_format: str,
    fingerprint: str,
) -> str:
    """The storage name of `spec` rendered as `output_format` from the source version `key`."""
    prefix = name_prefix(path, key, source_name)
    return name_with_spec(prefix, str(spec), output_format, fingerprint)


def name_prefix(path: str, key: str, source_name: str) -> str:
    """The part of a name shared by every rendition of one source version: `PATH/sh/key/stem.`."""
    return f"{source_prefix(path, key)}{slug_stem(source_name)}."


def name_with_spec(prefix: str, spec: str, output_format: str, fingerprint: str) -> str:
    """A full name from `name_prefix` and a canonical spec string (for callers naming many)."""
    return f"{prefix}{spec.replace('|', '.')}.{fingerprint}.{EXTENSIONS[output_format]}"


def source_prefix(path: str, key: str) -> str:
    """The folder holding every rendition of the source version `key`, ending in '/'."""
    return f"{_prefix(path)}{key[:2]}/{key}/"


def parse_rendition_name(name: str, path: str) -> RenditionName | None:
    """Read a storage name back; None unless this scheme, under `path`, made exactly it."""
    prefix = _prefix(path)
    if not name.startswith(prefix):
        return None
    match = _NAME.fullmatch(name[len(prefix) :])
    if match is None or match["key"][:2] != match["shard"]:
        return None
    output_format = _FORMAT_BY_EXTENSION.get(match["extension"])
    if output_format is None:
        return None
    dotted = match["spec"]
    try:
        spec = parse_spec(dotted.replace(".", "|"))
    except InvalidSpec:
        return None
    if str(spec).replace("|", ".") != dotted or spec.format not in {None, output_format}:
        return None  # only the canonical spelling is ours
    return RenditionName(match["key"], match["stem"], spec, match["fingerprint"], output_format)


def _prefix(path: str) -> str:
    cleaned = path.strip("/")
    return f"{cleaned}/" if cleaned else ""
