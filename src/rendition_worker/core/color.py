"""Convert working images to sRGB through their embedded ICC profile (CMYK, Adobe RGB, P3)."""

from __future__ import annotations

import functools
import io
import logging

from PIL import Image, ImageCms

logger = logging.getLogger(__name__)

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Return `image` (RGB, RGBA, L, LA or CMYK) as sRGB pixels without colour metadata.

    The caller hands `image` over: RGB pixels are converted in place (a copy would cost as
    much memory again). Grey images stay grey: a grey profile differs from sRGB's curve by
    a level or two and a grey JPEG is a third of the size of the same picture in RGB.
    """
    mode = image.mode
    convertible = icc_profile and mode in {"RGB", "RGBA", "CMYK"}
    transform = _transform(icc_profile, mode) if convertible else None
    if transform is not None:
        converted = _apply(transform, image)
    elif mode == "CMYK":
        converted = image.convert("RGB")
    else:
        converted = image
    converted.info = {}
    return converted


def _apply(transform: ImageCms.ImageCmsTransform, image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        transform.apply_in_place(image)
        return image
    if image.mode != "RGBA":
        return transform.apply(image)
    # LittleCMS through Pillow does not carry the alpha band: convert colour, then re-attach.
    converted = transform.apply(image.convert("RGB"))
    converted.putalpha(image.getchannel("A"))
    return converted


@functools.lru_cache(maxsize=16)
def _transform(icc_profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    # Building a transform costs milliseconds; camera photos share a handful of profiles.
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        description = ImageCms.getProfileDescription(profile).strip()
        if mode != "CMYK" and "srgb" in description.lower():
            return None
        in_mode = "RGB" if mode == "RGBA" else mode
        return ImageCms.buildTransform(
            profile, _SRGB, in_mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        # A broken profile is metadata damage, not pixel damage: keep the pixels as they are.
        logger.warning("ignoring an unusable ICC profile (%s)", exc)
        return None
