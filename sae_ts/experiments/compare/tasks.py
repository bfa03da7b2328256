"""Concept tasks in the SAE-TS format, and the split of their texts into two roles.

A task directory holds ``act_steer.json`` (``{"pos": [...], "neg": [...]}``) and
``criteria.json`` (``[{"name", "score", "coherence"}]``). :func:`split_roles` divides each side's
texts with a seeded permutation into a *build* half (CAA vector, target-latent selection) and a
*judge* half (the behaviour judge), so that no text both builds a vector and judges it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, MissingFileError

__all__ = ["Task", "TaskRoles", "load_task", "split_roles"]


@dataclass(frozen=True)
class Task:
    """A concept task: contrastive texts and the judge's criteria."""

    name: str
    pos: list[str]
    neg: list[str]
    score_criterion: str
    coherence_criterion: str
    path: str = ""


def load_task(path: str | Path) -> Task:
    """Read an SAE-TS task directory; raise a clear error for anything missing or malformed."""
    p = Path(path)
    files = {n: p / n for n in ("act_steer.json", "criteria.json")}
    for n, f in files.items():
        if not f.exists():
            raise MissingFileError(f"task {p} has no {n}")
    try:
        act = json.loads(files["act_steer.json"].read_text(encoding="utf-8"))
        crit = json.loads(files["criteria.json"].read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"task {p}: malformed JSON: {e}") from e
    if not isinstance(act, dict) or not act.get("pos") or not act.get("neg"):
        raise ConfigError(f"task {p}: act_steer.json needs non-empty 'pos' and 'neg' lists")
    if not all(isinstance(t, str) and t.strip() for t in [*act["pos"], *act["neg"]]):
        raise ConfigError(f"task {p}: act_steer.json holds an empty or non-string text")
    c = crit[0] if isinstance(crit, list) and crit else crit
    if not isinstance(c, dict) or not {"score", "coherence"} <= set(c):
        raise ConfigError(f"task {p}: criteria.json needs 'score' and 'coherence'")
    return Task(
        str(c.get("name", p.name)),
        list(act["pos"]),
        list(act["neg"]),
        c["score"],
        c["coherence"],
        str(p),
    )


@dataclass(frozen=True)
class TaskRoles:
    """A task's texts split by role: ``build`` makes vectors and targets, ``judge`` judges."""

    build: Task
    judge: Task

    def to_dict(self) -> dict[str, Any]:
        return {
            role: {"pos": list(t.pos), "neg": list(t.neg)}
            for role, t in (("build", self.build), ("judge", self.judge))
        }


def _dedupe(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts))


def split_roles(task: Task, seed: int = 0) -> TaskRoles:
    """Split positives and negatives, each into two halves, by a seeded permutation.

    Texts are stripped and de-duplicated first (a repeated text cannot be in both halves), and a
    text listed as both positive and negative is refused. The build half gets ``ceil(n / 2)``.
    """
    pos, neg = _dedupe(task.pos), _dedupe(task.neg)
    both = set(pos) & set(neg)
    if both:
        raise ConfigError(
            f"task {task.name}: texts listed as positive and negative: {sorted(both)}"
        )
    if len(pos) < 2 or len(neg) < 2:
        raise ConfigError(
            f"task {task.name}: need >= 2 distinct positive and >= 2 distinct negative texts to "
            f"split them into a build half and a judge half (got {len(pos)} and {len(neg)})"
        )
    rng = np.random.default_rng(seed)

    def halves(texts: list[str]) -> tuple[list[str], list[str]]:
        perm = rng.permutation(len(texts))
        k = (len(texts) + 1) // 2
        return [texts[i] for i in perm[:k]], [texts[i] for i in perm[k:]]

    (bp, jp), (bn, jn) = halves(pos), halves(neg)
    fields = (task.score_criterion, task.coherence_criterion, task.path)
    return TaskRoles(Task(task.name, bp, bn, *fields), Task(task.name, jp, jn, *fields))
