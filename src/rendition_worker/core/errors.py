"""The exception family of rendition-worker: one base, leaves that also subclass builtins."""

from __future__ import annotations

from enum import StrEnum


class RenditionError(Exception):
    """Base class of every error rendition-worker raises on purpose."""


class InvalidSpec(RenditionError, ValueError):
    """A spec string (or a set definition) that cannot be parsed."""


class SourceProblem(StrEnum):
    """Why a source image cannot be rendered; permanent until its file changes."""

    CORRUPT = "corrupt"
    NOT_IMAGE = "not-image"
    UNSUPPORTED = "unsupported"
    TOO_LARGE = "too-large"
    MISSING = "missing"


class BadSource(RenditionError):
    """A source file that can never be rendered as it is: retrying will not help."""

    def __init__(self, problem: SourceProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


class BadMessage(RenditionError, ValueError):
    """A task message that no run of the task can carry out: wrong, missing or extra arguments."""
