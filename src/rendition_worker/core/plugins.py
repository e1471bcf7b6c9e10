"""Register the Pillow plugins rendition-worker decodes and encodes with, once per process."""

from __future__ import annotations

import os

# SVT-AV1 prints a banner and its configuration to stderr on every encode unless told
# otherwise; it reads the variable when it first logs, so set it before any AVIF encode.
os.environ.setdefault("SVT_LOG", "1")

import pillow_avif  # noqa: F401  # replaces Pillow's AVIF plugin: SVT-AV1, aom and rav1e

try:  # HEIC/HEIF is what iPhones upload; decodable only with the optional `heif` extra.
    import pillow_heif
except ImportError:  # pragma: no cover - depends on the installed extras
    HEIF_AVAILABLE = False
else:
    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
