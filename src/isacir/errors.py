"""Exception hierarchy.

Every error a user can cause derives from :class:`IsacirError`, so the CLI and the HTTP layer can
turn it into a one-line message (or a 4xx) instead of a stack trace.
"""

from __future__ import annotations


class IsacirError(Exception):
    """Base class for errors caused by input or environment, not by bugs."""


class UnknownModelError(IsacirError, ValueError):
    """A foundation, family or backbone name that no registry knows."""


class ConfigError(IsacirError, ValueError):
    """Settings that contradict each other or the model they are meant for."""


class ModelLoadError(IsacirError, RuntimeError):
    """Weights could not be obtained (offline, missing file, bad checkpoint)."""


class FoundationLoadError(ModelLoadError):
    """A foundation's weights or config could not be loaded."""


class FoundationMismatchError(IsacirError):
    """A component was built for one foundation and is used with another."""


def same_name_hint(recorded_name: str, given_name: str) -> str:
    """What to do when the names agree but the weights do not (the fingerprints differ).

    This happens with a checkpoint file that changed, a folder that was retrained in place, or
    random weights built by an isacir release with another seed or architecture default.
    """
    if recorded_name != given_name:
        return ""
    return (
        f" Both are called {given_name!r}, but the weights differ: load the exact weights it was "
        "built with (save them once and pass the file, openclip:ARCH@/path/model.pt), or rebuild it "
        "with the weights you have."
    )


class PseudoTokenError(IsacirError, ValueError):
    """Pseudo tokens with a wrong shape, dtype or non-finite values."""


class TemplateError(IsacirError, ValueError):
    """A prompt template without the placeholders composition needs."""


class ImageDecodeError(IsacirError, ValueError):
    """An image that cannot be decoded safely.

    ``reason`` is a short machine-readable tag (``missing``, ``empty``, ``corrupt``, ``truncated``,
    ``too_large``, ``unsupported``) so that batch jobs can count skipped files by cause.
    """

    def __init__(self, message: str, reason: str = "corrupt"):
        super().__init__(message)
        self.reason = reason


class CheckpointError(IsacirError):
    """A checkpoint folder that is missing files or does not match its config."""
