"""The comparison's settings: the methods, the norm sweep and :class:`CompareConfig`'s budgets.

Its own module, so that the generation loop (:mod:`.generation`) and the runner (:mod:`.run`)
both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...selection import SELECTORS

__all__ = ["DEFAULT_METHODS", "FULL_NORMS", "METHODS", "SOLVED", "STEERED", "CompareConfig"]

METHODS = (
    "caa", "sae", "sae_ts", "targeted", "targeted_span", "targeted_ft", "targeted_caa", "fgaa",
    "prompt",
)  # fmt: skip
"""Every row the comparison can run: CAA; the SAE latent(s) (``sae``); the paper's rule
(``sae_ts``) and sae-ts's solver (``targeted``) on the chosen targets; the solver within the
target latents' own decoder rows (``targeted_span``,
:func:`~sae_ts.solver.solve_in_decoder_span`); the solver anchored to the CAA vector
(``targeted_caa``: the effect model correcting CAA, ``solve(..., anchor=caa)``); FGAA (the paper's rule on FGAA's own target); and
the prompting baseline (the concept stated as an instruction)."""
STEERED = tuple(m for m in METHODS if m != "prompt")
DEFAULT_METHODS = tuple(m for m in METHODS if m != "targeted_ft")
"""What a comparison runs unless told: every row but ``targeted_ft``, which needs a first-token
effect model (``ridge_first_token``, SmolLM2's shipped one) and is asked for by name."""
SOLVED = ("sae_ts", "targeted", "targeted_span", "targeted_ft", "targeted_caa", "fgaa")
"""The steered methods whose vector comes from the effect model."""
FULL_NORMS = tuple(round(0.08 * i, 2) for i in range(11))  # 0, 0.08, ..., 0.8


@dataclass(frozen=True)
class CompareConfig:
    """Sweep, sampling and measurement settings; ``budget()`` gives the CLI's presets.

    ``norm_fractions`` are multiples of the per-token residual norm; 0 (the unsteered row) is
    always included. ``samples`` per norm and method; sample ``i`` uses prompt
    ``prompts[i % len(prompts)]``.
    """

    prompts: tuple[str, ...] = ("I think",)
    norm_fractions: tuple[float, ...] = FULL_NORMS
    samples: int = 64
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 0.3
    n_features: int = 3
    max_density: float = 0.1  # latents firing on more reference tokens than this are excluded
    # the target-selection rule (sae_ts.selection.SELECTORS); FGAA's weighted contrastive target
    # won the 9-task quick ranking of the five rules (benchmarks/results/selection_quick)
    targets: str = "fgaa"
    validation_samples: int = 32  # generations per task also scored by independent judges
    bootstrap: int = 2000
    batch_rows: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompts or self.samples < 2 or self.max_new_tokens < 1:
            raise ConfigError("need >= 1 prompt, >= 2 samples and >= 1 new token")
        if any(f < 0 for f in self.norm_fractions) or not any(f > 0 for f in self.norm_fractions):
            raise ConfigError("norm_fractions must be >= 0, with at least one > 0")
        if self.bootstrap < 10 or self.batch_rows < 1:
            raise ConfigError("need batch_rows >= 1 and bootstrap >= 10")
        if self.targets not in SELECTORS:
            raise ConfigError(f"unknown target selection {self.targets!r}; use one of {SELECTORS}")

    @property
    def steered_fractions(self) -> list[float]:
        return sorted({float(f) for f in self.norm_fractions if f > 0})

    @classmethod
    def budget(cls, name: str, **kw: Any) -> CompareConfig:
        """``full`` (the README's run), ``quick`` (minutes a task) or ``smoke`` (tests)."""
        presets: dict[str, dict[str, Any]] = {
            "full": {},
            "quick": dict(norm_fractions=(0.0, 0.16, 0.32, 0.48, 0.64, 0.8), samples=16,
                          max_new_tokens=12, validation_samples=16, bootstrap=500),
            "smoke": dict(norm_fractions=(0.0, 0.4, 0.8), samples=4, max_new_tokens=6,
                          validation_samples=4, bootstrap=50),
        }  # fmt: skip
        if name not in presets:
            raise ConfigError(f"unknown budget {name!r}; use one of {sorted(presets)}")
        return cls(**{**presets[name], **kw})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
