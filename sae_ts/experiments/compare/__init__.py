"""The method comparison on concept tasks (``sae-ts compare``).

Modules, in the order the data flows: :mod:`.config` (settings and budgets), :mod:`.tasks`
(task directories and the build/judge split), :mod:`.generation` (paired steered generations),
:mod:`.judges` (behaviour, coherence and validation judges), :mod:`.stats` (held-out norm choice,
paired bootstrap CIs) and :mod:`.run` (one task, many tasks, checkpoints). The names below are the
public API; everything else is importable from its module.
"""

from __future__ import annotations

from .config import DEFAULT_METHODS, FULL_NORMS, METHODS, CompareConfig
from .generation import Generations, paired_generations
from .run import (
    build_vectors,
    compare_task,
    load_effect_model,
    parse_feature_overrides,
    pooled_validation,
    run_comparison,
)
from .tasks import Task, TaskRoles, load_task, split_roles

__all__ = [
    "DEFAULT_METHODS",
    "FULL_NORMS",
    "METHODS",
    "CompareConfig",
    "Generations",
    "Task",
    "TaskRoles",
    "build_vectors",
    "compare_task",
    "load_effect_model",
    "load_task",
    "paired_generations",
    "parse_feature_overrides",
    "pooled_validation",
    "run_comparison",
    "split_roles",
]
