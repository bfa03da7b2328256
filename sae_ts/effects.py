"""Effect estimation: what a steering vector does to the SAE features of generated text.

For each candidate vector ``v`` (with scale ``s``) sae-ts samples continuations from a set of
prompts with ``s * v`` added at the steering hook, SAE-encodes the activations of the generated
sequences at the SAE hook, averages them over positions and sequences, and subtracts the same
average from unsteered rollouts. That ``d_sae`` vector is the *effect* of ``v``
(Chalnev, Siu & Conmy 2024, SAE-TS). The protocol defaults follow the official code (see
:class:`EffectConfig`).

Speed (the reason this module exists rather than a loop over ``model.generate``):

* many candidate vectors share one batched, KV-cached generation (one vector per batch row);
* no second pass: when the SAE hook is not after the steering hook, the activations read at the
  SAE hook *before* the vector is added equal those of an unsteered re-run of the generated tokens
  (causality), so they are encoded on the fly. Otherwise a truncated re-run (stopping at the SAE's
  layer) is made;
* top-k is applied before top-p, so nucleus sampling sorts 50 candidates rather than the vocabulary;
* scale calibration evaluates all vectors at once and starts after the steering layer.

Randomness is per rollout: the rollout ``r`` of vector ``i`` on prompt ``p`` draws from its own
stream seeded by ``(seed, i, p, r)``, so results do not depend on batch composition or chunking,
and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._util import DEFAULT_SINK_RATIO, hook_layer, sink_threshold, to_tokens
from .artifacts import ArtifactError, load_artifact, save_artifact, write_json_atomic
from .backends import is_bridge, run_with_cache
from .errors import ConfigError
from .executors import Executor, LocalExecutor
from .generation import generate, gumbel_noise, sample_gumbel
from .generation import sample as _sample_with_uniforms
from .loading import Loaded
from .sae import check_pair, sink_reference_norm
from .steering import SteeringHook, add_hooks, check_vector
from .types import HookFn, LanguageModel

__all__ = [
    "PAPER_PROMPTS",
    "EffectConfig",
    "EffectDataset",
    "EffectEstimator",
    "calibrate_scales",
    "decoder_directions",
    "estimate_effects",
    "random_directions",
]

# The official code's 14 prompts ("" is BOS alone; it lost one prompt through a missing comma).
PAPER_PROMPTS: tuple[str, ...] = (
    "", "", "", "I think", "Breaking news", "Last night", "For sale", "The weather",
    "Dear Sir/Madam", "Preheat the oven", "It's interesting that", "Assistant:", "I went up to",
    "New study suggests",
)  # fmt: skip


@dataclass(frozen=True)
class EffectConfig:
    """The measurement protocol. Defaults follow the SAE-TS code except ``rollouts``.

    ``rollouts`` (per prompt per vector) defaults to the value recommended by
    ``benchmarks/effect_model_budget.py`` rather than the paper's 64: for a fixed token budget,
    fewer rollouts over more vectors fit the effect model as well or better.
    """

    prompts: tuple[str, ...] = PAPER_PROMPTS
    seq_len: int = 32  # total tokens per sequence including BOS and prompt
    rollouts: int = 1
    baseline_multiplier: int = 10
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 0.3
    positions: str = "all"  # where the vector is added: every position, as in the paper
    batch_rows: int = 256  # sequences per forward pass
    # positions with norm > ratio x the reference norm (and position 0) are left out; None: the
    # ratio recorded in the SAE's metadata (7 where it records none), resolved by EffectEstimator
    sink_ratio: float | None = None
    # Coupled sampling: Gumbel-max noise per (prompt, rollout, step, vocabulary id), shared by every
    # vector and the baseline, so a small logit change rarely changes the draw; effects are then
    # paired differences against the baseline rollouts with the same (prompt, rollout).
    coupled: bool = False

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("EffectConfig.prompts is empty")
        if self.rollouts < 1 or self.baseline_multiplier < 1 or self.batch_rows < 1:
            raise ValueError("rollouts, baseline_multiplier and batch_rows must be >= 1")
        if self.positions != "all":
            raise ValueError("effect estimation steers every position (positions='all')")
        if self.coupled and self.temperature == 0.0:
            raise ValueError("coupled sampling needs temperature > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.coupled:
            del d["coupled"]  # keeps the resume keys of earlier (independent) runs unchanged
        return d


def random_directions(n: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """``n`` unit-norm Gaussian directions, seeded."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d_model, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def decoder_directions(
    sae: Any, features: Sequence[int] | None = None, n: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Unit-norm SAE decoder rows: the given ``features``, or ``n`` random distinct ones."""
    W = sae.W_dec.detach().float().cpu()
    if features is None:
        if n is None:
            raise ValueError("give features or n")
        g = torch.Generator().manual_seed(seed)
        features = torch.randperm(W.shape[0], generator=g)[:n].tolist()
    idx = torch.as_tensor(list(features), dtype=torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= W.shape[0]):
        raise ValueError(f"feature ids must be in [0, {W.shape[0]}), got {idx.tolist()[:10]}")
    rows = W[idx]
    return rows / rows.norm(dim=-1, keepdim=True)


def _stream_seed(*parts: int) -> int:
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 62) - 1)


def _uniforms(seeds: Sequence[int], n: int) -> torch.Tensor:
    out = torch.empty(len(seeds), n)
    for i, s in enumerate(seeds):
        out[i] = torch.rand(n, generator=torch.Generator().manual_seed(s))
    return out


@dataclass
class EffectDataset:
    """Inputs (unit vectors), their scales, measured effects and the unsteered baseline."""

    inputs: torch.Tensor  # [n, d_model]
    scales: torch.Tensor  # [n]
    effects: torch.Tensor  # [n, d_sae]
    baseline: torch.Tensor  # [d_sae] mean feature activations without steering
    record: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def head(self, n: int) -> EffectDataset:
        """The first ``n`` vectors (a campaign's chunks are a shuffled, representative prefix)."""
        return EffectDataset(
            self.inputs[:n], self.scales[:n], self.effects[:n], self.baseline, self.record
        )

    def subset(self, index: Sequence[int] | torch.Tensor) -> EffectDataset:
        """The vectors at ``index`` (e.g. only the decoder rows of a campaign), same baseline."""
        idx = torch.as_tensor(index, dtype=torch.long)
        if idx.ndim != 1 or (idx.numel() and (idx.min() < 0 or idx.max() >= len(self))):
            raise IndexError(f"subset needs indices in [0, {len(self)}), got {idx.tolist()[:8]}")
        return EffectDataset(
            self.inputs[idx], self.scales[idx], self.effects[idx], self.baseline, self.record
        )

    def rebase(self, baseline: torch.Tensor) -> EffectDataset:
        """The same measurements as effects relative to another unsteered ``baseline``.

        An effect is a steered mean minus an unsteered one. Each estimation run measures its
        own baseline, whose sampling error is a constant offset shared by all its effects.
        Comparing effects of two runs (a model fitted on one, scored on another) needs one
        reference: ``effects + self.baseline - baseline``.
        """
        if baseline.shape != self.baseline.shape:
            raise ValueError(
                f"baseline has shape {tuple(baseline.shape)}, the effects are relative to one "
                f"of shape {tuple(self.baseline.shape)}"
            )
        if not torch.isfinite(baseline).all():
            raise ValueError("baseline contains NaN or inf")
        shift = (self.baseline.float() - baseline.float()).to(self.effects.dtype)
        return EffectDataset(
            self.inputs, self.scales, self.effects + shift, baseline.clone(), self.record
        )

    def save(self, path: str | Path) -> Path:
        rec = {"kind": "effect_dataset", **self.record}
        return save_artifact(
            path,
            {
                "inputs": self.inputs,
                "scales": self.scales,
                "effects": self.effects,
                "baseline": self.baseline,
            },
            rec,
        )

    @classmethod
    def load(cls, path: str | Path) -> EffectDataset:
        t, rec = load_artifact(
            path, kind="effect_dataset", tensors=("inputs", "scales", "effects", "baseline")
        )
        return cls(t["inputs"], t["scales"], t["effects"], t["baseline"], rec)

    @classmethod
    def load_dir(cls, path: str | Path) -> EffectDataset:
        """The finished chunks of an :func:`estimate_effects` directory (``out_dir``), in order.

        Works on a partly finished run (a campaign still going, or committed chunk by chunk);
        ``record["chunks"]`` lists the chunk numbers loaded, so the rows can be matched to the
        campaign's own lists (row ``i`` of chunk ``c`` is input ``c * chunk_size + i``).
        """
        path = Path(path)
        man_path = path / "manifest.json"
        if not man_path.exists():
            raise ArtifactError(f"{path} has no manifest.json: not an estimate_effects directory")
        try:
            record = json.loads(man_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"corrupt manifest {man_path}: {e}") from e
        if not isinstance(record, dict):
            raise ArtifactError(f"corrupt manifest {man_path}: not a JSON object")
        baseline = load_artifact(path / "baseline", kind="effect_baseline", tensors=("baseline",))[
            0
        ]["baseline"]
        chunks = sorted(path.glob("chunk_*.safetensors"))
        if not chunks:
            raise ArtifactError(f"{path} has no finished chunks yet")
        parts = []
        for c in chunks:
            t, _ = load_artifact(
                c.with_suffix(""), kind="effect_chunk", tensors=("inputs", "scales", "effects")
            )
            x = t["inputs"].float()
            parts.append(
                cls(x / x.norm(dim=-1, keepdim=True), t["scales"].float(), t["effects"].float(),
                    baseline.float(), record)
            )  # fmt: skip
        ds = cls.concat(parts)
        ds.record["chunks"] = [int(c.stem.split("_")[1]) for c in chunks]
        return ds

    @classmethod
    def concat(cls, parts: Sequence[EffectDataset]) -> EffectDataset:
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(
            torch.cat([p.inputs for p in parts]),
            torch.cat([p.scales for p in parts]),
            torch.cat([p.effects for p in parts]),
            parts[0].baseline,
            dict(parts[0].record),
        )


class EffectEstimator:
    """Measures mean SAE feature activations of steered generations, batched across vectors.

    Args:
        model: a HookedTransformer or TransformerBridge.
        sae: a sae-lens SAE whose ``cfg.metadata.hook_name`` is read (or pass ``sae_hook``).
        steer_hook: where vectors are added (default: the SAE's hook, as in the paper).
        config: the protocol.
        seed: base seed of every random stream.
    """

    def __init__(
        self,
        model: LanguageModel,
        sae: Any,
        steer_hook: str | None = None,
        config: EffectConfig | None = None,
        seed: int = 0,
        sae_hook: str | None = None,
    ) -> None:
        self.model = model
        self.sae = sae
        self.sae_hook = sae_hook or sae.cfg.metadata.hook_name
        if not self.sae_hook:
            raise ValueError("the SAE has no cfg.metadata.hook_name; pass sae_hook=")
        self.steer_hook = steer_hook or self.sae_hook
        check_pair(model, sae, self.sae_hook)
        if self.steer_hook not in model.hook_dict:
            raise ValueError(f"hook {self.steer_hook!r} is not in model {model.cfg.model_name!r}")
        config = config or EffectConfig()
        if config.sink_ratio is None:  # resolved here, so resume keys hold the number used
            meta = getattr(sae.cfg, "metadata", None)
            ratio = meta.get("sink_ratio") if meta is not None else None
            config = dataclasses.replace(config, sink_ratio=float(ratio or DEFAULT_SINK_RATIO))
        self.config = config
        self.seed = seed
        self.d_sae = int(sae.cfg.d_sae)
        self.rerun = not _reads_before(self.sae_hook, self.steer_hook)
        self._prompt_tokens = [to_tokens(model, [p])[0] for p in self.config.prompts]
        for p, t in zip(self.config.prompts, self._prompt_tokens):
            if t.shape[0] >= self.config.seq_len:
                raise ValueError(
                    f"prompt {p!r} is {t.shape[0]} tokens; seq_len is {self.config.seq_len}"
                )
        self._sink_threshold = self._reference_sink_threshold()

    def _reference_sink_threshold(self) -> float:
        # the one sink rule: ratio x the SAE's recorded reference norm; for an SAE without one,
        # the median residual norm at the SAE hook on the reference text (position 0 out)
        ref = sink_reference_norm(self.sae)
        if ref is not None:
            return sink_threshold(self.config.sink_ratio or DEFAULT_SINK_RATIO, ref)
        norms = _reference_norms(self.model, self.sae_hook)
        return sink_threshold(self.config.sink_ratio or DEFAULT_SINK_RATIO, float(norms.median()))

    # -- measurement -------------------------------------------------------------------------

    def _encode_sum(
        self, acts: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sums of SAE features over kept, non-sink positions, and the counts."""
        acts = acts.float()
        keep = keep.to(acts.device) & (acts.norm(dim=-1) <= self._sink_threshold)
        feats = self.sae.encode(acts.to(self.sae.W_enc.dtype)).float()
        feats = feats * keep.unsqueeze(-1)
        return feats.sum(1), keep.sum(1).float()

    def _run_rows(
        self,
        prompt_idx: Sequence[int],
        vectors: torch.Tensor | None,
        scales: torch.Tensor | None,
        seeds: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One rollout per row (row ``b`` from prompt ``prompt_idx[b]``, left-padded together).

        Every row's sequence is ``seq_len`` tokens including its BOS and prompt; rows with longer
        prompts stop counting earlier. Returns per-row feature sums and position counts.
        """
        cfg = self.config
        model = self.model
        device = model.cfg.device
        rows = len(seeds)
        prompts = [self._prompt_tokens[p] for p in prompt_idx]
        lens = torch.tensor([len(t) for t in prompts], device=device)
        width = int(lens.max())
        pad = model.tokenizer.pad_token_id if model.tokenizer is not None else 0
        tokens = torch.full((rows, width), int(pad), dtype=torch.long, device=device)
        for b, t in enumerate(prompts):
            tokens[b, width - len(t) :] = t.to(device)
        n_new = cfg.seq_len - lens  # tokens each row generates
        steps = int(n_new.max())
        if cfg.coupled:
            uniq = sorted(set(seeds))
            row_of = torch.tensor([uniq.index(x) for x in seeds], device=device)
        else:
            u = _uniforms(seeds, steps).to(device)
        pos = torch.arange(width, device=device)[None]
        first_keep = pos > (width - lens)[:, None]  # real prompt positions after the BOS
        sums = torch.zeros(rows, self.d_sae, device=device)
        counts = torch.zeros(rows, device=device)
        state = {"call": 0}

        def capture(act: torch.Tensor, hook: Any) -> None:
            c = state["call"]
            keep = first_keep if c == 0 else (c <= n_new)[:, None]
            s_, n_ = self._encode_sum(act, keep)
            sums.add_(s_)
            counts.add_(n_)

        def next_token(i: int, last: torch.Tensor) -> torch.Tensor:
            if cfg.coupled:
                g = gumbel_noise([_stream_seed(x, i) for x in uniq], last.shape[-1], last.device)
                nxt = sample_gumbel(last, g[row_of], cfg.temperature, cfg.top_k, cfg.top_p)
            else:
                nxt = _sample_with_uniforms(last, u[:, i], cfg.temperature, cfg.top_k, cfg.top_p)
            state["call"] = i + 1  # the next forward pass carries generated token i + 1
            return nxt

        hooks: list[tuple[str, HookFn]] = []
        if not self.rerun:
            hooks.append((self.sae_hook, capture))  # registered first: reads before steering
        if vectors is not None:
            assert scales is not None
            hooks.append((self.steer_hook, SteeringHook(vectors.to(device), scales.to(device))))
        full = generate(
            model,
            tokens,
            steps,
            fwd_hooks=hooks,
            attention_mask=(pos >= (width - lens)[:, None]).long(),  # left padding
            next_token=next_token,
            # without a re-run, the last token's activations are read up to the SAE layer only
            last_stop_at_layer=None if self.rerun else hook_layer(self.sae_hook) + 1,
        )
        if self.rerun:
            j = torch.arange(full.shape[1], device=device)[None]
            keep = (j > (width - lens)[:, None]) & (j <= (width - 1 + n_new)[:, None])
            acts: dict[str, torch.Tensor] = {}

            def grab(act: torch.Tensor, hook: Any) -> None:
                acts["x"] = act

            full_mask = (j >= (width - lens)[:, None]).long()
            with torch.no_grad(), add_hooks(model, [(self.sae_hook, grab)]):
                model(full, attention_mask=full_mask, stop_at_layer=hook_layer(self.sae_hook) + 1)
            s_, n_ = self._encode_sum(acts["x"], keep)
            sums.add_(s_)
            counts.add_(n_)
        return sums, counts

    def _measure(
        self,
        vectors: torch.Tensor | None,
        scales: torch.Tensor | None,
        vector_ids: Sequence[int],
        rollouts: int,
        progress: tqdm | None = None,
    ) -> torch.Tensor:
        """Mean feature activations per vector (``[n, d_sae]``), over prompts x rollouts.

        All (vector, prompt, rollout) rows are batched together, ``batch_rows`` at a time, grouped
        by prompt length so that little padding is needed.
        """
        n = len(vector_ids)
        device = self.model.cfg.device
        sums = torch.zeros(n, self.d_sae, device=device)
        counts = torch.zeros(n, device=device)
        n_prompts = len(self.config.prompts)
        plen = [len(t) for t in self._prompt_tokens]
        rows = [(v, p, r) for p in range(n_prompts) for v in range(n) for r in range(rollouts)]
        rows.sort(key=lambda x: (plen[x[1]], x[1]))
        for start in range(0, len(rows), self.config.batch_rows):
            batch = rows[start : start + self.config.batch_rows]
            vi = torch.tensor([x[0] for x in batch], device=device)
            if self.config.coupled:  # one stream per (prompt, rollout), shared by all vectors
                seeds = [_stream_seed(self.seed, -2, p, r) for _, p, r in batch]
            else:
                seeds = [_stream_seed(self.seed, vector_ids[v], p, r) for v, p, r in batch]
            v_rows = s_rows = None
            if vectors is not None:
                assert scales is not None
                v_rows, s_rows = vectors[vi.cpu()], scales[vi.cpu()]
            fs, c = self._run_rows([x[1] for x in batch], v_rows, s_rows, seeds)
            sums.index_add_(0, vi, fs)
            counts.index_add_(0, vi, c)
            if progress is not None:
                progress.update(len(batch))
        return (sums / counts.clamp_min(1)[:, None]).cpu()

    def baseline(self, progress: bool = True, rollouts: int | None = None) -> torch.Tensor:
        """Mean feature activations of unsteered rollouts.

        ``baseline_multiplier`` x as many rollouts as the steered ones (``rollouts``, default the
        config's); as many, on the same (prompt, rollout) streams, when sampling is coupled.
        """
        r = rollouts or self.config.rollouts
        r = r if self.config.coupled else r * self.config.baseline_multiplier
        bar = tqdm(
            total=len(self.config.prompts) * r, desc="baseline rollouts", disable=not progress
        )
        out = self._measure(None, None, [-1], r, bar)[0]
        bar.close()
        return out

    def measure(
        self,
        vectors: torch.Tensor,
        scales: torch.Tensor | float,
        vector_ids: Sequence[int] | None = None,
        rollouts: int | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Mean SAE feature activations of generations steered by ``scales * vectors``."""
        vectors = check_vector(vectors, self.model.cfg.d_model, "vectors")
        if vectors.ndim == 1:
            vectors = vectors[None]
        scales_t = torch.as_tensor(scales, dtype=torch.float32).expand(vectors.shape[0]).clone()
        ids = list(range(vectors.shape[0])) if vector_ids is None else list(vector_ids)
        if len(ids) != vectors.shape[0]:
            raise ValueError(f"{len(ids)} vector ids for {vectors.shape[0]} vectors")
        r = rollouts or self.config.rollouts
        n_rows = vectors.shape[0] * len(self.config.prompts) * r
        bar = tqdm(total=n_rows, desc="steered rollouts", disable=not progress)
        out = self._measure(vectors.float(), scales_t, ids, r, bar)
        bar.close()
        return out


def _reads_before(sae_hook: str, steer_hook: str) -> bool:
    """True if activations at ``sae_hook`` can be read unsteered during steered generation."""
    order = {"hook_resid_pre": 0, "hook_resid_mid": 1, "hook_resid_post": 2}
    ls, lt = hook_layer(sae_hook), hook_layer(steer_hook)
    if ls != lt:
        return ls < lt
    ks, kt = sae_hook.split(".")[-1], steer_hook.split(".")[-1]
    if ks in order and kt in order:
        return order[ks] <= order[kt]
    return sae_hook == steer_hook


def calibrate_scales(
    model: LanguageModel,
    vectors: torch.Tensor,
    hook_name: str,
    target_increase: float = 0.5,
    reference: Sequence[str] | None = None,
    bracket: tuple[float, float] | None = None,
    max_tokens: int = 256,
) -> torch.Tensor:
    """Per-vector scale at which the LM loss on ``reference`` rises by ``target_increase`` nats.

    All vectors are evaluated in one batched pass per root-finder iteration (scipy's elementwise
    Chandrupatla solver), starting from the cached residual at the steering layer. The bracket
    defaults to [0, 20 x the median residual norm at the hook]. Vectors whose loss never rises
    enough inside the bracket get the upper end (and a warning).
    """
    from scipy.optimize.elementwise import find_root

    if is_bridge(model):
        raise ConfigError(
            "loss-calibrated scales restart the forward pass at the steering layer "
            "(start_at_layer), which TransformerBridge does not support; use a fixed scale "
            "(--scale / --scale-fraction) or backend='hooked'"
        )
    vectors = check_vector(vectors, model.cfg.d_model, "vectors")
    if vectors.ndim == 1:
        vectors = vectors[None]
    if target_increase <= 0:
        raise ValueError("target_increase must be > 0 nats")
    texts = list(reference) if reference is not None else reference_texts()
    toks = to_tokens(model, texts)[:, : max_tokens + 1]
    if toks.shape[0] != 1:
        raise ValueError("calibrate on one reference sequence (join texts first)")
    layer = hook_layer(hook_name)
    if not hook_name.endswith("hook_resid_post"):
        raise ValueError("scale calibration needs a hook_resid_post steering hook")
    with torch.no_grad():
        _, cache = run_with_cache(model, toks, names_filter=hook_name, stop_at_layer=layer + 1)
        resid = cache[hook_name]  # [1, pos, d]
        base_loss = float(model(resid, start_at_layer=layer + 1, tokens=toks, return_type="loss"))
        med = float(resid[0, 1:].norm(dim=-1).median())
    unit = vectors / vectors.norm(dim=-1, keepdim=True)

    def loss_at(scales: np.ndarray, idx: np.ndarray) -> np.ndarray:
        flat_s = torch.as_tensor(scales.ravel(), dtype=torch.float32)
        flat_i = torch.as_tensor(idx.ravel(), dtype=torch.long)
        out = np.empty(flat_s.shape[0])
        with torch.no_grad():
            for start in range(0, flat_s.shape[0], 16):
                sl = slice(start, start + 16)
                delta = (unit[flat_i[sl]] * flat_s[sl, None]).to(resid)
                x = resid.expand(delta.shape[0], -1, -1) + delta[:, None, :]  # every position
                losses = model(
                    x, start_at_layer=layer + 1, tokens=toks.expand(delta.shape[0], -1),
                    return_type="loss", loss_per_token=True,
                )  # fmt: skip
                out[sl] = losses.mean(-1).double().numpy()
        return (out - base_loss - target_increase).reshape(scales.shape)

    lo, hi = bracket if bracket is not None else (0.0, 20.0 * med)
    idx = np.arange(unit.shape[0], dtype=np.float64)
    f_hi = loss_at(np.full_like(idx, hi), idx)
    ok = f_hi > 0
    result = np.full_like(idx, hi)
    if ok.any():
        res = find_root(loss_at, (np.full(int(ok.sum()), lo), np.full(int(ok.sum()), hi)), args=(idx[ok],),
                        tolerances={"xrtol": 1e-3, "fatol": 1e-3})  # fmt: skip
        result[ok] = res.x
    if not ok.all():
        import warnings

        warnings.warn(
            f"{int((~ok).sum())} vectors never reach +{target_increase} nats below scale {hi:.1f}",
            stacklevel=2,
        )
    return torch.as_tensor(result, dtype=torch.float32)


def typical_residual_norm(model: LanguageModel, hook_name: str) -> float:
    """The median per-token residual norm at ``hook_name`` on the reference text, sinks left out.

    Scales in sae-ts's protocols are given as fractions of this (about 143.7 at
    ``blocks.12.hook_resid_post`` of the embedded model).
    """
    n = _reference_norms(model, hook_name)
    return float(n[n < 7 * n.median()].median())


def _reference_norms(model: LanguageModel, hook_name: str) -> torch.Tensor:
    """Residual norms at ``hook_name`` on the first 256 reference-text tokens, position 0 out."""
    toks = to_tokens(model, reference_texts(2000))[:, :256]
    with torch.no_grad():
        _, cache = run_with_cache(
            model, toks, names_filter=hook_name, stop_at_layer=hook_layer(hook_name) + 1
        )
    return cache[hook_name][0, 1:].float().norm(dim=-1)


def reference_texts(n_chars: int = 4000) -> list[str]:
    """A reference text that is always available offline: Python's own ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    text = " ".join(text.split())
    start = len(text) // 3
    return [text[start : start + n_chars]]


def sae_fingerprint(sae: Any) -> str:
    """A short hash of the SAE's weights (identifies the SAE in records).

    Covers the encoder, the decoder and, for JumpReLU SAEs, the thresholds (SAEs without a
    threshold hash as before).
    """
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(sae, name, None)
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class _EstimatorSpec:
    """What a worker needs, besides its own model and SAE, to rebuild the driver's estimator."""

    steer_hook: str
    sae_hook: str
    config: EffectConfig
    seed: int
    model_name: str
    sae_fingerprint: str

    @classmethod
    def of(cls, est: EffectEstimator) -> _EstimatorSpec:
        return cls(
            est.steer_hook, est.sae_hook, est.config, est.seed, est.model.cfg.model_name,
            sae_fingerprint(est.sae),
        )  # fmt: skip

    def __call__(self, loaded: Loaded) -> EffectEstimator:
        model, sae = loaded.model, loaded.sae
        got = (model.cfg.model_name, sae_fingerprint(sae))
        if got != (self.model_name, self.sae_fingerprint):
            raise ConfigError(
                f"a worker loaded model {got[0]!r} with SAE {got[1]}, the driver "
                f"{self.model_name!r} with SAE {self.sae_fingerprint}: give the workers the "
                "driver's load() arguments"
            )
        return EffectEstimator(
            model, sae, self.steer_hook, self.config, self.seed, sae_hook=self.sae_hook
        )


@dataclass(frozen=True)
class _Chunk:
    inputs: torch.Tensor  # unit vectors
    scales: torch.Tensor
    first_id: int  # vector ids (random streams) are first_id, first_id + 1, ...


def _measure_chunk(est: EffectEstimator, job: _Chunk) -> torch.Tensor:
    ids = list(range(job.first_id, job.first_id + job.inputs.shape[0]))
    return est.measure(job.inputs, job.scales, vector_ids=ids, progress=False)


def _measure_baseline(est: EffectEstimator, progress: bool) -> torch.Tensor:
    return est.baseline(progress=progress)


def _manifest_key(config: EffectConfig, seed: int, extra: dict[str, Any]) -> str:
    # batch_rows changes speed, not results (batched equals unbatched), so it is not in the key
    cfg = {k: v for k, v in config.to_dict().items() if k != "batch_rows"}
    blob = json.dumps({"config": cfg, "seed": seed, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def estimate_effects(
    estimator: EffectEstimator,
    vectors: torch.Tensor,
    scales: torch.Tensor | float | None = None,
    *,
    out_dir: str | Path | None = None,
    chunk_size: int = 64,
    calibrate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    store_dtype: torch.dtype = torch.float32,
    shard: tuple[int, int] = (0, 1),
    executor: Executor | None = None,
) -> EffectDataset:
    """Estimate effects of ``vectors`` (unit-normalised) in chunks; resume from ``out_dir``.

    Each chunk is written as ``chunk_NNNNN.safetensors`` + ``.json``; ``manifest.json`` holds the
    config, seed and a fingerprint of the inputs. Re-running with the same arguments skips finished
    chunks; a different config, seed or input set in the same ``out_dir`` is refused.

    ``scales``: a float for all, a ``[n]`` tensor, or None with ``calibrate`` (e.g.
    ``lambda v: calibrate_scales(model, v, hook)``) to calibrate each chunk.

    ``store_dtype``: the dtype chunks are written in (``torch.float16`` halves the size of a
    campaign meant to be committed). Fresh results are rounded to it too, so a resumed run still
    equals an uninterrupted one.

    ``shard=(k, m)``: do only the chunks ``c`` with ``c % m == k`` and return those, so that ``m``
    processes can share one ``out_dir`` (compute the baseline first, e.g. with ``shard=(0, m)`` on
    no chunks, or let the first process write it). :meth:`EffectDataset.load_dir` reads them all.

    ``executor``: where the baseline and the chunks are measured (default: here, in order). With a
    :class:`~sae_ts.executors.RayExecutor` every worker measures whole chunks on its own copy of
    the model and SAE; this process calibrates (if asked), keeps the manifest and writes each
    chunk as it comes back. Each vector's random streams depend on its index only, so the
    effects are the same for any number of workers: bit for bit on CPU in fp32 at the same
    ``chunk_size`` and ``batch_rows`` and the same torch thread count, since a BLAS call's
    rounding depends on its shape and threads (another ``chunk_size`` moves the last bits only).
    """
    k_shard, m_shard = shard
    if not 0 <= k_shard < m_shard:
        raise ValueError(f"shard must be (k, m) with 0 <= k < m, got {shard}")
    vectors = check_vector(vectors, estimator.model.cfg.d_model, "vectors").float()
    if vectors.ndim == 1:
        vectors = vectors[None]
    norms = vectors.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("zero vector among the inputs")
    units = vectors / norms
    n = units.shape[0]
    if scales is None and calibrate is None:
        raise ValueError("give scales or a calibrate function")
    fixed: torch.Tensor | None = None
    if scales is not None:
        fixed = torch.as_tensor(scales, dtype=torch.float32).expand(n).clone()
    fingerprint = hashlib.sha256(units.numpy().tobytes()).hexdigest()[:16]
    record = {
        "model": estimator.model.cfg.model_name,
        "steer_hook": estimator.steer_hook,
        "sae_hook": estimator.sae_hook,
        "d_sae": estimator.d_sae,
        "sae_fingerprint": sae_fingerprint(estimator.sae),
        "config": estimator.config.to_dict(),
        "seed": estimator.seed,
        "inputs_fingerprint": fingerprint,
        "device": str(estimator.model.cfg.device),
        "torch": torch.__version__,
        "scale_mode": "fixed" if fixed is not None else "calibrated",
        "store_dtype": str(store_dtype).removeprefix("torch."),
        "scales_fingerprint": None
        if fixed is None
        else hashlib.sha256(fixed.numpy().tobytes()).hexdigest()[:16],
    }
    if fixed is not None and bool((fixed == fixed[0]).all()):
        record["scale"] = float(fixed[0])
    out = Path(out_dir) if out_dir is not None else None
    # The resume key covers everything that changes the numbers: protocol, seed, model, hooks,
    # the SAE's weights, the inputs and the scales. A mismatch is refused, never mixed.
    key = _manifest_key(
        estimator.config,
        estimator.seed,
        {
            k: record[k]
            for k in (
                "model", "steer_hook", "sae_hook", "sae_fingerprint", "inputs_fingerprint",
                "scale_mode", "scales_fingerprint", "store_dtype",
            )
        },
    )  # fmt: skip
    baseline: torch.Tensor | None = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        man_path = out / "manifest.json"
        if man_path.exists():
            man = json.loads(man_path.read_text())
            if man.get("key") != key:
                now = json.loads(
                    json.dumps({**record, "n": n, "chunk_size": chunk_size}, default=str)
                )

                def cfg(d: dict[str, Any]) -> dict[str, Any]:
                    return {k: v for k, v in d.get("config", {}).items() if k != "batch_rows"}

                diff = [
                    k
                    for k in now
                    if k not in ("device", "torch", "config") and man.get(k) != now[k]
                ] + (["config"] if cfg(man) != cfg(now) else [])
                raise ArtifactError(
                    f"{out} holds an estimation made with other settings (differing: "
                    f"{', '.join(diff) or 'the resume key'}); resume with the same model, SAE, "
                    "hooks, config, seed, inputs and scales, or use a new out_dir"
                )
        else:
            write_json_atomic(man_path, {"key": key, "n": n, "chunk_size": chunk_size, **record})
        if (out / "baseline.safetensors").exists():
            baseline = load_artifact(out / "baseline", kind="effect_baseline")[0]["baseline"]
    ex = executor or LocalExecutor()
    spec = _EstimatorSpec.of(estimator)
    if baseline is None:
        baseline = next(
            ex.imap(_measure_baseline, [progress and ex.in_process], local=estimator, remote=spec)
        )[1]
        if out is not None:
            save_artifact(
                out / "baseline", {"baseline": baseline}, {"kind": "effect_baseline", **record}
            )
    n_chunks = math.ceil(n / chunk_size)
    mine = [c for c in range(n_chunks) if c % m_shard == k_shard]
    bar = tqdm(total=len(mine), desc="effect chunks", disable=not progress)
    done: dict[int, EffectDataset] = {}
    todo: list[int] = []
    for c in mine:
        sl = slice(c * chunk_size, min(n, (c + 1) * chunk_size))
        path = out / f"chunk_{c:05d}" if out is not None else None
        if path is not None and path.with_suffix(".safetensors").exists():
            t, _ = load_artifact(path, kind="effect_chunk")
            done[c] = EffectDataset(
                units[sl], t["scales"].float(), t["effects"].float(), baseline, record
            )
            bar.update(1)
        else:
            todo.append(c)

    scales_of: dict[int, torch.Tensor] = {}

    def jobs() -> Iterator[_Chunk]:  # lazy: calibration runs here, as a worker becomes free
        for c in todo:
            sl = slice(c * chunk_size, min(n, (c + 1) * chunk_size))
            s = fixed[sl] if fixed is not None else calibrate(units[sl])  # type: ignore[misc]
            scales_of[c] = s
            yield _Chunk(units[sl], s, sl.start)

    for i, means in ex.imap(_measure_chunk, jobs(), local=estimator, remote=spec):
        c = todo[i]
        u, s = units[c * chunk_size : (c + 1) * chunk_size], scales_of.pop(c)
        eff = (means - baseline).to(store_dtype)
        if out is not None:  # written as each chunk comes back: a kill loses no finished chunk
            save_artifact(
                out / f"chunk_{c:05d}",
                {"inputs": u.to(store_dtype), "scales": s, "effects": eff},
                {"kind": "effect_chunk", "chunk": c, **record},
            )
        done[c] = EffectDataset(u, s, eff.float(), baseline, record)
        bar.update(1)
    bar.close()
    parts = [done[c] for c in mine]
    if not parts:  # an empty shard
        d = estimator.model.cfg.d_model
        return EffectDataset(
            torch.zeros(0, d), torch.zeros(0), torch.zeros(0, estimator.d_sae), baseline, record
        )
    ds = EffectDataset.concat(parts)
    ds.record = record
    return ds
