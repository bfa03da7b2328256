"""Deprecated: moved to :mod:`sae_ts.judges.llm`; this alias will be removed."""

from __future__ import annotations

import warnings

from .judges.llm import *  # noqa: F403
from .judges.llm import __all__ as __all__

warnings.warn("sae_ts.llm_judges moved to sae_ts.judges.llm", DeprecationWarning, stacklevel=2)
