"""The errors sae-ts raises on purpose.

Every error the library raises deliberately derives from :class:`SaeTsError`, so callers (and the
``sae-ts`` command line) can tell a clear, expected failure from a bug or a resource failure such
as running out of memory. Where older code or users catch a builtin (``ValueError``,
``FileNotFoundError``...), the sae-ts class also derives from that builtin.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "CorpusError",
    "HubUnavailableError",
    "InputTypeError",
    "JudgeAPIError",
    "MissingExtraError",
    "MissingFileError",
    "ModelFetchError",
    "SaeTsError",
    "UnknownHookError",
    "WorkerError",
]


class SaeTsError(Exception):
    """Base of every error sae-ts raises on purpose."""


class ConfigError(SaeTsError, ValueError):
    """An argument, configuration or input does not fit (a ``ValueError``)."""


class InputTypeError(SaeTsError, TypeError):
    """An argument of the wrong type (a ``TypeError``)."""


class MissingFileError(SaeTsError, FileNotFoundError):
    """A file or directory sae-ts needs is not there (a ``FileNotFoundError``)."""


class UnknownHookError(SaeTsError, KeyError):
    """A hook name that is not a hook point of the model (a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ArtifactError(SaeTsError, ValueError):
    """An artefact is missing, corrupt, or does not belong where it is being loaded."""


class ModelFetchError(SaeTsError, RuntimeError):
    """The embedded model could not be fetched, verified or unpacked."""


class HubUnavailableError(SaeTsError, RuntimeError):
    """A model or SAE could not be fetched from the Hugging Face hub."""


class CorpusError(SaeTsError, RuntimeError):
    """A corpus source could not be fetched, verified or parsed."""


class JudgeAPIError(SaeTsError, RuntimeError):
    """The judge endpoint could not be reached or answered with an error."""


class MissingExtraError(SaeTsError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class WorkerError(SaeTsError, RuntimeError):
    """A distributed job lost its worker more often than the executor allows."""
