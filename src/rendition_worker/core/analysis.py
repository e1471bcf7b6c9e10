"""What a render learns from a source's small copy: where its subject is, its placeholder.

Computed once per source version (the caller stores the result and passes it back as
known), from a copy of about 256 px that the pipeline makes from the decoded pixels.
`Focus` is what the caller knows; `Analysis` is what crops are placed with.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from rendition_worker.core.focal import Box, FocalBox, FocalMode, placement_key
from rendition_worker.core.placeholder import Placeholder, make_placeholder
from rendition_worker.core.subject import SUBJECT_VERSION, estimate_subject

# Long side of the small copy: enough for a saliency estimate and a 24 px preview.
SMALL_SIDE = 256


@dataclass(frozen=True, slots=True)
class Focus:
    """How to place crops, and what is known already about this source version."""

    box: FocalBox | None = None  # set by a person: crops keep it and `-cN` zooms to it
    # Without a box: estimate the subject, or centre. The app passes FOCAL_POINT ("auto" by
    # default); the core on its own centres, as a plain image library would.
    mode: FocalMode = FocalMode.CENTRE
    subject: FocalBox | None = None  # an estimate stored by an earlier render
    placeholder: Placeholder | None = None  # likewise

    @property
    def placement(self) -> str:
        """What crops placed this way are named by (see `naming.spec_fingerprint`)."""
        return placement_key(self.box, self.mode, SUBJECT_VERSION)

    def needs_small_copy(self) -> bool:
        """Whether anything must be computed from the pixels."""
        wants_subject = self.mode == FocalMode.AUTO and self.subject is None
        return self.placeholder is None or wants_subject


@dataclass(frozen=True, slots=True)
class Analysis:
    """The subject and placeholder of a source version, and what computing them cost."""

    subject: FocalBox | None
    placeholder: Placeholder | None
    focus: FocalBox | None  # what crops are placed around: the box, the subject, or none
    zoom: bool  # whether `-cN` may zoom in on `focus` (only on a box a person set)
    ms: float = 0.0  # the small copy and what was computed from it

    def focus_pixels(self, size: tuple[int, int]) -> Box | None:
        """The focus in pixels of an upright picture of `size`."""
        return self.focus.pixels(size) if self.focus is not None else None


def analyse(focus: Focus, small: Image.Image | None, size: tuple[int, int]) -> Analysis:
    """Complete what `focus` does not know yet from `small`, the upright sRGB copy.

    `small` may be None only when `focus.needs_small_copy()` is false. In "auto" mode the
    subject is estimated even for a source without crops, or with a box set: once per
    version, so that a crop set added later, or a box cleared, finds it there.
    """
    subject, placeholder = focus.subject, focus.placeholder
    if small is not None:
        if placeholder is None:
            placeholder = make_placeholder(small, size)
        if subject is None and focus.mode == FocalMode.AUTO:
            subject = estimate_subject(small)
    placed: FocalBox | None
    if focus.box is not None:
        placed, zoom = focus.box, True
    elif focus.mode == FocalMode.AUTO:
        placed, zoom = subject, False
    else:
        placed, zoom = None, False
    return Analysis(subject, placeholder, placed, zoom)
