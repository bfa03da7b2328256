"""The comparison's judges: which judge scores, and which independent judges check it.

A :data:`JudgeFactory` builds the behaviour and coherence judges of one task from the task's
*judge-role* texts (:func:`~sae_ts.experiments.compare.tasks.split_roles`), unsteered reference
generations (coherence calibration) and the prompt. A :data:`ValidatorFactory` builds the
independent judges that the behaviour judge is compared with on generated text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...judges.base import Judge
from ...judges.llm import APICriterionJudge, ChatClient, HFCriterionJudge
from ...judges.offline import CoherenceJudge, EmbeddingBehaviorJudge
from ...judges.validation import CriterionSimilarityJudge
from ...types import LanguageModel
from .tasks import Task

__all__ = [
    "JudgeFactory",
    "ValidatorFactory",
    "judges_from_args",
    "llm_judges",
    "offline_judges",
    "offline_validators",
]

JudgeFactory = Callable[[Task, list[str], str], tuple[Any, Any]]
"""``(judge_task, unsteered_reference_generations, prompt) -> (behaviour, coherence)``."""

ValidatorFactory = Callable[[Task], dict[str, Judge]]
"""``judge_task -> {name: behaviour judge}``: judges independent of the one being checked."""


def offline_judges(embedder: Any = None, model: LanguageModel | None = None) -> JudgeFactory:
    """The default judges: the embedding behaviour judge on the judge-role texts and criterion,
    and the unsteered-likelihood coherence judge."""

    def make(task: Task, unsteered: list[str], prompt: str) -> tuple[Any, Any]:
        if model is None:
            raise ConfigError("offline_judges needs the model for the coherence judge")
        return (
            EmbeddingBehaviorJudge(task.pos, task.neg, task.score_criterion, embedder),
            CoherenceJudge(model, unsteered, prompt=prompt),
        )

    return make


def llm_judges(
    client: Any = None, hf_model: Any = None, hf_tokenizer: Any = None, device: str = "cpu"
) -> JudgeFactory:
    """The SAE-TS paper's judging: one LLM scores the task's behaviour and coherence criteria.

    Pass an OpenAI-compatible :class:`~sae_ts.judges.llm.ChatClient` (``client``) or a local
    Hugging Face model (``hf_model``, path or loaded model with ``hf_tokenizer``, on ``device``).
    The HF model is loaded once and shared by both judges and all tasks. Only the criteria are
    used: these judges see none of the task's texts.
    """
    shared: dict[str, Any] = {}

    def make(task: Task, unsteered: list[str], prompt: str) -> tuple[Any, Any]:
        if client is not None:
            return (
                APICriterionJudge(task.score_criterion, client),
                APICriterionJudge(task.coherence_criterion, client),
            )
        if hf_model is None:
            raise ConfigError("llm_judges needs a chat client or a Hugging Face model")
        m, tok = shared.get("model", hf_model), shared.get("tok", hf_tokenizer)
        b = HFCriterionJudge(task.score_criterion, m, tokenizer=tok, device=device)
        shared.update(model=b.model, tok=b.tok)
        c = HFCriterionJudge(task.coherence_criterion, b.model, tokenizer=b.tok, device=device)
        return b, c

    # what identifies these judges in a resume key (never an object's address)
    if client is not None:
        make.key = f"api:{getattr(client, 'model', '?')}@{getattr(client, 'base_url', '?')}"  # type: ignore[attr-defined]
    else:
        name = hf_model if isinstance(hf_model, str) else type(hf_model).__name__
        make.key = f"hf:{name}"  # type: ignore[attr-defined]
    return make


def offline_validators(
    embedder: Any = None,
    hf_model: Any = None,
    hf_tokenizer: Any = None,
    device: str = "cpu",
    embedding_judge: bool = False,
) -> ValidatorFactory:
    """Judges to check a behaviour judge against:

    * ``"lm_criterion"``: an instruct LM scoring the criterion with the SAE-TS judge prompt
      (:class:`~sae_ts.judges.llm.HFCriterionJudge`; given as ``hf_model`` and ``hf_tokenizer``,
      left out if ``hf_model`` is None);
    * ``"criterion_embedding"``: embedding similarity to the criterion sentence alone;
    * ``"embedding"`` (with ``embedding_judge``, to check an LLM judge): the offline embedding
      judge on the judge-role texts.
    """

    def make(task: Task) -> dict[str, Judge]:
        out: dict[str, Judge] = {}
        if embedding_judge:
            out["embedding"] = EmbeddingBehaviorJudge(
                task.pos, task.neg, task.score_criterion, embedder
            )
        if hf_model is not None:
            out["lm_criterion"] = HFCriterionJudge(
                task.score_criterion, hf_model, tokenizer=hf_tokenizer, device=device
            )
        out["criterion_embedding"] = CriterionSimilarityJudge(task.score_criterion, embedder)
        return out

    return make


def judges_from_args(
    judge: str,
    judge_model: str | None,
    base_url: str | None,
    cache: str | Path,
    device: str = "cpu",
) -> JudgeFactory | None:
    """The judge factory for ``--judge offline|api|hf`` (``None`` means the offline default)."""
    if judge == "offline":
        return None
    if judge == "api":
        client = ChatClient(
            model=judge_model or "gpt-4o-mini",
            base_url=base_url or "https://api.openai.com/v1",
            cache_dir=cache,
        )
        return llm_judges(client=client)
    if judge == "hf":
        if not judge_model:
            raise ConfigError("--judge hf needs --judge-model PATH_OR_HUB_ID (an instruct model)")
        return llm_judges(hf_model=judge_model, device=device)
    raise ConfigError(f"unknown judge {judge!r}; use offline, api or hf")
