"""Does llama.cpp steer like sae-ts? The exported control vector, run by llama.cpp itself.

``sae_ts.deploy.to_llamacpp_gguf`` writes ``blocks.L.hook_resid_post`` as llama.cpp's
``direction.L``, a mapping read off llama.cpp's source. This benchmark runs llama.cpp (through
llama-cpp-python) on the very GGUF sae-ts dequantises (SmolLM2-135M-Instruct Q4_1,
:func:`sae_ts.models.embedded_gguf_path`), fed sae-ts's token ids (document start included), in
two set-ups: ``q4_1``, the file itself with llama.cpp's defaults (what a user runs), and ``f32``,
the file with every tensor dequantised to F32 (sae-ts's very weights) and an F32 KV cache, which
leaves out llama.cpp's quantised arithmetic (activations rounded to Q8_1 in the Q4_1/Q8_0 dot
products, the F16 KV cache) and nothing else.

(a) The layer mapping. The vector is exported for hook ``blocks.(L+d).hook_resid_post`` for each
    offset ``d`` in ``--offsets``, loaded into llama.cpp, and the next-token logits at every
    position of six prompts are compared with sae-ts's (TransformerLens) steered at
    ``blocks.L.hook_resid_post``, for each ``L`` in ``--layers``, at ``--fraction`` x the typical
    residual norm at ``L``. The unsteered difference is the yardstick: the right offset matches
    to within it, a wrong one does not. ``steer_hf`` on the HF model and greedy continuations
    are compared too.
(b) The SAE effect. The shipped effect model's ``targeted`` vector for the top wedding feature of
    ``sae_ts.find_features``, at the effect model's scale, steers sampled continuations of the
    14 SAE-TS prompts under the effect protocol (32 tokens, top-k 50, top-p 0.3, T = 1) in
    llama.cpp (``q4_1``) and in sae-ts, unsteered and steered, with the same uniform numbers for
    every (prompt, rollout, step) in all four runs. sae-ts's SAE reads every set of texts back
    (the estimator's rule: positions after the document start, sinks left out). Reported: the
    target effect (steered - unsteered) of each, the cosine of the effect vectors, the
    unsteered-vs-unsteered difference, and as the sampling-noise scale sae-ts again with other
    uniforms (``seed+1``) and sae-ts's own estimator; and how many sequences llama.cpp on the
    ``f32`` file generates exactly as sae-ts does (``--f32-rollouts`` per prompt).

llama-cpp-python has no control-vector file loader, so :func:`cvec_buffer` does what llama.cpp's
``common_control_vector_load`` does (``direction.N`` at offset ``n_embd * (N - 1)``) and
:meth:`LlamaCpp.set_control_vector` passes the buffer to ``llama_set_adapter_cvec`` for layers
1..n_layer, as ``llama-cli --control-vector`` does. About 11 min on one core.

    pip install 'sae-ts[llamacpp]'   # builds llama.cpp from the sdist
    python benchmarks/llamacpp_parity.py --plot benchmarks/results/llamacpp_parity.png
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

WEDDING = (
    "The bride and groom exchanged their wedding vows in front of the altar.",
    "We are planning our wedding: the ceremony, the reception and the first dance.",
    "She tried on her wedding dress while the bridesmaids chose the flowers.",
    "The best man gave a toast at the wedding reception and the guests cheered.",
)
NEUTRAL = (
    "The committee reviewed the quarterly budget and approved the new parking rules.",
    "He repaired the bicycle chain and oiled the gears before the long ride.",
    "The river rises every spring when the snow in the mountains melts.",
    "Download the report, check the figures and send the summary to the team.",
)
MAPPING_PROMPTS = (
    "I think the best way to spend a weekend is",
    "Breaking news: the city council voted today to",
    "Dear Sir/Madam, I am writing to ask about",
    "Preheat the oven to 180 degrees and mix the flour with",
    "New study suggests that people who sleep well",
    "Assistant: Sure! Here is a short story about",
)


# -- llama.cpp --------------------------------------------------------------------------------


def cvec_buffer(path: str | Path) -> tuple[np.ndarray, int]:
    """The flat buffer llama.cpp's ``common_control_vector_load`` builds from a control-vector
    GGUF: ``direction.N`` (N >= 1, F32, 1-D) added at offset ``n_embd * (N - 1)``; and n_embd."""
    from gguf import GGUFReader

    dirs: dict[int, np.ndarray] = {}
    for t in GGUFReader(str(path)).tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if m is None or int(m.group(1)) == 0:
            raise ValueError(f"{path}: {t.name!r} is not a direction.N tensor with N >= 1")
        data = np.asarray(t.data, dtype=np.float32).reshape(-1)
        dirs[int(m.group(1))] = dirs.get(int(m.group(1)), 0) + data
    if not dirs:
        raise ValueError(f"{path} holds no direction tensors")
    n_embd = {d.shape[0] for d in dirs.values()}
    if len(n_embd) != 1:
        raise ValueError(f"{path}: direction tensors of different sizes {n_embd}")
    d = n_embd.pop()
    buf = np.zeros(d * max(dirs), dtype=np.float32)
    for n, v in dirs.items():
        buf[d * (n - 1) : d * n] += v
    return buf, d


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on a GGUF: all-position logits, control vectors, a sampling
    loop driven by a caller-supplied next-token rule (the same one sae-ts's loop takes)."""

    def __init__(self, gguf: str | Path, n_ctx: int = 128, threads: int = 1, **kwargs: Any) -> None:
        import llama_cpp
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
            **kwargs,
        )
        n_layer = getattr(llama_cpp, "llama_model_n_layer", None) or llama_cpp.llama_n_layer
        self.n_layer = int(n_layer(self.llm.model))  # the older name before llama.cpp's rename
        self._buf: np.ndarray | None = None  # kept alive while llama.cpp holds the vector

    def set_control_vector(self, path: str | Path | None) -> None:
        """Load a control-vector GGUF for layers 1..n_layer (as ``--control-vector``); None clears."""
        import llama_cpp

        # older llama-cpp-python releases name it llama_apply_adapter_cvec
        setter = (
            llama_cpp.llama_set_adapter_cvec
            if hasattr(llama_cpp, "llama_set_adapter_cvec")
            else llama_cpp.llama_apply_adapter_cvec
        )
        n_embd = int(self.llm.n_embd())
        if path is None:
            self._buf = None
            rc = setter(self.llm.ctx, None, 0, n_embd, -1, -1)
        else:
            buf, d = cvec_buffer(path)
            if d != n_embd:
                raise ValueError(f"{path}: n_embd {d}, the model's is {n_embd}")
            # llama.cpp writes only the layers the buffer covers and leaves the others as they
            # were: cover every layer, or a vector set earlier in this context lingers there
            full = np.zeros(n_embd * (self.n_layer - 1), dtype=np.float32)
            full[: min(buf.size, full.size)] = buf[: full.size]
            self._buf = full
            ptr = self._buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = setter(self.llm.ctx, ptr, self._buf.size, n_embd, 1, self.n_layer)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapter_cvec returned {rc}")

    def close(self) -> None:
        """Free the model and context now (not at interpreter exit)."""
        self.llm.close()

    def logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """Next-token logits ``[len(tokens), vocab]`` at every position (fresh KV cache)."""
        self.llm.reset()
        self.llm.eval(list(tokens))
        return torch.from_numpy(np.array(self.llm.scores[: len(tokens)], dtype=np.float32))

    def generate(
        self, tokens: Sequence[int], n_new: int, next_token: Callable[[int, torch.Tensor], int]
    ) -> list[int]:
        """``tokens`` + ``n_new`` tokens, token ``i`` from ``next_token(i, last_logits)``."""
        self.llm.reset()
        out = list(tokens)
        self.llm.eval(out)
        for i in range(n_new):
            last = torch.from_numpy(np.array(self.llm.scores[len(out) - 1], dtype=np.float32))
            out.append(int(next_token(i, last)))
            if i + 1 < n_new:
                self.llm.eval(out[-1:])
        return out


# -- sae-ts side ------------------------------------------------------------------------------


def tl_logits(
    model: Any,
    tokens: Sequence[int],
    hook: str | None = None,
    vec: torch.Tensor | None = None,
    scale: float = 0.0,
) -> torch.Tensor:
    """sae-ts's (TransformerLens) logits ``[len, vocab]``, steered when ``hook`` is given."""
    from sae_ts import steer

    x = torch.tensor([list(tokens)])
    with torch.no_grad():
        if hook is None or vec is None:
            return model(x)[0].float()
        with steer(model, vec, hook, scale=scale):
            return model(x)[0].float()


def logit_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """RMS and max |a - b|, top-1 agreement and mean KL(softmax a || softmax b) over positions."""
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    return {
        "rms": float((a - b).pow(2).mean().sqrt()),
        "max_abs": float((a - b).abs().max()),
        "top1_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "kl": float((la.exp() * (la - lb)).sum(-1).mean()),
    }


def pooled(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over prompts (max for ``max_abs``)."""
    return {
        k: float(max(r[k] for r in rows))
        if k == "max_abs"
        else float(np.mean([r[k] for r in rows]))
        for k in rows[0]
    }


def sae_means(model: Any, sae: Any, hook: str, seqs: torch.Tensor) -> torch.Tensor:
    """Mean SAE features over every non-sink position after the document start of ``seqs``
    ``[n, len]`` (read unsteered, up to the SAE's layer): the effect estimator's read-out."""
    from sae_ts.models import hook_layer
    from sae_ts.sae import sink_positions

    total, count = torch.zeros(int(sae.cfg.d_sae)), 0.0
    with torch.no_grad():
        for start in range(0, seqs.shape[0], 64):
            _, cache = model.run_with_cache(
                seqs[start : start + 64], names_filter=hook, stop_at_layer=hook_layer(hook) + 1
            )
            acts = cache[hook].float()
            keep = ~sink_positions(sae, acts)  # position 0 and norm sinks, as the estimator
            feats = sae.encode(acts.to(sae.W_enc.dtype)).float() * keep.unsqueeze(-1)
            total += feats.sum((0, 1))
            count += float(keep.sum())
    return total / max(count, 1.0)


# -- (a) the layer mapping --------------------------------------------------------------------


def f32_gguf(src: str | Path, dst: str | Path) -> Path:
    """A copy of the GGUF ``src`` with every tensor dequantised to F32: the weights sae-ts runs.

    Running llama.cpp on it (with an F32 KV cache) leaves llama.cpp's quantised arithmetic out,
    so what is left of the difference from sae-ts is the rest: graph, RoPE, BOS, the mapping.
    """
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(str(src))
    writer = GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue  # written by GGUFWriter itself
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        value = 0 if f.name == "general.file_type" else f.contents()  # 0: all F32
        writer.add_key_value(f.name, value, f.types[0], sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(dst)


def saets_reference(
    model: Any, hf: Any, vec: torch.Tensor, scales: dict[int, float], prompts: Sequence[str]
) -> dict[str, Any]:
    """sae-ts's logits for each prompt, unsteered and steered at ``blocks.L.hook_resid_post``
    (TransformerLens, and ``steer_hf`` on the HF model), for each ``L`` in ``scales``."""
    from sae_ts.deploy import steer_hf
    from sae_ts.models import to_tokens

    toks = [to_tokens(model, [p])[0].tolist() for p in prompts]
    ref: dict[str, Any] = {"tokens": toks, "tl": {}, "hf": {}}
    with torch.no_grad():
        ref["tl"][None] = [tl_logits(model, t) for t in toks]
        ref["hf"][None] = [hf(torch.tensor([t])).logits[0].float() for t in toks]
        for L, scale in scales.items():
            hook = f"blocks.{L}.hook_resid_post"
            ref["tl"][L] = [tl_logits(model, t, hook, vec, scale) for t in toks]
            with steer_hf(hf, vec, scale=scale, hook_name=hook):
                ref["hf"][L] = [hf(torch.tensor([t])).logits[0].float() for t in toks]
    return ref


def diffs(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> dict[str, float]:
    """:func:`logit_diff` pooled over prompts."""
    return pooled([logit_diff(x, y) for x, y in zip(a, b)])


def mapping_check(
    model: Any,
    cpp: LlamaCpp,
    vec: torch.Tensor,
    ref: dict[str, Any],
    scales: dict[int, float],
    offsets: Sequence[int],
    out_dir: Path,
    greedy_tokens: int = 16,
) -> dict[str, Any]:
    """Logit agreement of llama.cpp steered at ``direction.(L+d)`` with sae-ts at ``blocks.L``.

    Each ``direction.(L+d)`` file is written by ``to_llamacpp_gguf`` for the hook
    ``blocks.(L+d).hook_resid_post`` at sae-ts's scale for ``L``. At ``d = 0`` greedy
    continuations (KV-cached on both sides) are compared too.
    """
    from sae_ts import SteeringVector, steer
    from sae_ts.deploy import to_llamacpp_gguf
    from sae_ts.generation import generate

    toks = ref["tokens"]
    cpp.set_control_vector(None)
    c0 = [cpp.logits(t) for t in toks]

    def greedy(hook: str | None, scale: float, gguf: Path | None) -> list[int]:
        first = []
        cpp.set_control_vector(gguf)
        for t in toks:
            if hook is None:
                want = generate(model, torch.tensor([t]), greedy_tokens, temperature=0.0)
            else:
                with steer(model, vec, hook, scale=scale):
                    want = generate(model, torch.tensor([t]), greedy_tokens, temperature=0.0)
            got = cpp.generate(t, greedy_tokens, lambda i, x: int(x.argmax()))
            pairs = zip(want[0, len(t) :].tolist(), got[len(t) :])
            first.append(next((i for i, (a, b) in enumerate(pairs) if a != b), greedy_tokens))
        cpp.set_control_vector(None)
        return first  # per prompt: the first position where the continuations differ

    out: dict[str, Any] = {
        "unsteered": diffs(ref["tl"][None], c0),
        "unsteered_greedy_first_difference": greedy(None, 0.0, None),
        "layers": {},
    }
    for L, scale in scales.items():
        row: dict[str, Any] = {"scale": scale, "offsets": {}}
        for d in offsets:
            n = L + d
            if not 1 <= n < cpp.n_layer:  # llama.cpp has directions 1..n_layer-1 only
                continue
            sv = SteeringVector(
                vec, f"blocks.{n}.hook_resid_post", model.cfg.model_name, "parity", scale=scale
            )
            path = to_llamacpp_gguf(sv, out_dir / f"direction_{n}.gguf", layer_count=cpp.n_layer)
            cpp.set_control_vector(path)
            cs = [cpp.logits(t) for t in toks]
            row["offsets"][str(d)] = {"direction": n, **diffs(ref["tl"][L], cs)}
            if d == 0:
                row["hf_vs_llamacpp"] = diffs(ref["hf"][L], cs)
                row["greedy_first_difference"] = greedy(sv.hook_name, scale, path)
            cpp.set_control_vector(None)
        row["best_offset"] = int(min(row["offsets"], key=lambda k: row["offsets"][k]["rms"]))
        out["layers"][str(L)] = row
    # clearing the control vector gives back the unsteered logits exactly
    out["unsteered_after_clear_max_abs"] = diffs(c0, [cpp.logits(t) for t in toks])["max_abs"]
    out["greedy_tokens"] = greedy_tokens
    return out


# -- (b) the SAE effect -----------------------------------------------------------------------


def effect_check(
    model: Any,
    sae: Any,
    hook: str,
    cpp: LlamaCpp,
    vec: torch.Tensor,
    scale: float,
    feature: int,
    protocol: dict[str, Any],
    rollouts: int,
    seed: int,
    out_dir: Path,
    exact: LlamaCpp | None = None,
    exact_rollouts: int = 4,
) -> dict[str, Any]:
    """SAE effects of llama.cpp-steered and sae-ts-steered generations, read back by sae-ts.

    Every run samples with sae-ts's sampler (:func:`sae_ts.generation.sample`) from the same
    uniform numbers per (prompt, rollout, step); the ``seed+1`` runs of sae-ts use other numbers,
    for the sampling-noise scale. sae-ts's own estimator (:func:`sae_ts.measure_vector`, its own
    streams, baseline of as many rollouts) is run as a check of the read-out. ``exact`` (llama.cpp
    on the F32 file) generates the first ``exact_rollouts`` rollouts of each prompt too, to count
    how many sequences come out the same as sae-ts's.
    """
    from sae_ts import EffectConfig, EffectEstimator, SteeringVector, Target, measure_vector, steer
    from sae_ts.deploy import to_llamacpp_gguf
    from sae_ts.generation import generate, sample
    from sae_ts.models import to_tokens

    prompts = list(protocol["prompts"])
    seq_len, temp = int(protocol["seq_len"]), float(protocol["temperature"])
    top_k, top_p = protocol["top_k"], protocol["top_p"]
    ptoks = [to_tokens(model, [p])[0].tolist() for p in prompts]

    def uniforms(s: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(s)
        return torch.rand(len(prompts), rollouts, seq_len, generator=g)

    # sae-ts: every (prompt, rollout) row in one left-padded batch, as the estimator batches
    rows = [p for p in range(len(prompts)) for _ in range(rollouts)]
    lens = [len(ptoks[p]) for p in rows]
    width = max(lens)
    batch = torch.full((len(rows), width), int(model.tokenizer.pad_token_id), dtype=torch.long)
    for b, p in enumerate(rows):
        batch[b, width - lens[b] :] = torch.tensor(ptoks[p])
    mask = (torch.arange(width)[None] >= width - torch.tensor(lens)[:, None]).long()

    def run_saets(steered: bool, u: torch.Tensor) -> torch.Tensor:
        u_rows = u.reshape(len(rows), seq_len)  # row order (prompt, rollout), as in run_cpp

        def nxt(i: int, last: torch.Tensor) -> torch.Tensor:
            return sample(last, u_rows[:, i], temp, top_k, top_p)

        with steer(model, vec, hook, scale=scale if steered else 0.0):
            full = generate(model, batch, seq_len - min(lens), attention_mask=mask, next_token=nxt)
        return torch.stack([full[b, width - n : width - n + seq_len] for b, n in enumerate(lens)])

    def run_cpp(u: torch.Tensor, cpp: LlamaCpp = cpp, n: int = rollouts) -> torch.Tensor:
        seqs = []
        for p, t in enumerate(ptoks):
            for r in range(n):

                def nxt(i: int, last: torch.Tensor, p: int = p, r: int = r) -> int:
                    return int(sample(last[None], u[p, r, i : i + 1], temp, top_k, top_p)[0])

                seqs.append(cpp.generate(t, seq_len - len(t), nxt))
        return torch.tensor(seqs)

    sv = SteeringVector(
        vec,
        hook,
        model.cfg.model_name,
        "targeted",
        scale=scale,
        target={"raise": {str(feature): 1.0}},
    )
    path = to_llamacpp_gguf(sv, out_dir / "targeted.gguf", layer_count=cpp.n_layer)
    u, u_other = uniforms(seed), uniforms(seed + 1)
    seconds: dict[str, float] = {}
    gens: dict[str, torch.Tensor] = {}
    runs: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("saets_unsteered", lambda: run_saets(False, u)),
        ("saets_steered", lambda: run_saets(True, u)),
        ("saets_unsteered_seed+1", lambda: run_saets(False, u_other)),
        ("saets_steered_seed+1", lambda: run_saets(True, u_other)),
        ("llamacpp_unsteered", lambda: run_cpp(u)),
        ("llamacpp_steered", lambda: run_cpp(u)),
    ]
    for name, fn in runs:
        t0 = time.perf_counter()
        cpp.set_control_vector(path if name == "llamacpp_steered" else None)
        gens[name] = fn()
        seconds[name] = time.perf_counter() - t0
    cpp.set_control_vector(None)
    exact_same: dict[str, float] = {}
    if exact is not None:
        k = min(exact_rollouts, rollouts)
        first = torch.tensor([p * rollouts + r for p in range(len(prompts)) for r in range(k)])
        for name in ("unsteered", "steered"):
            t0 = time.perf_counter()
            exact.set_control_vector(path if name == "steered" else None)
            got = run_cpp(u, exact, k)
            exact_same[name] = float((got == gens[f"saets_{name}"][first]).all(1).float().mean())
            seconds[f"llamacpp_f32_{name}"] = time.perf_counter() - t0
        exact.set_control_vector(None)
    t0 = time.perf_counter()
    means = {k: sae_means(model, sae, hook, g) for k, g in gens.items()}
    seconds["sae_read_out"] = time.perf_counter() - t0
    eff = {
        "saets": means["saets_steered"] - means["saets_unsteered"],
        "llamacpp": means["llamacpp_steered"] - means["llamacpp_unsteered"],
        "saets_seed+1": means["saets_steered_seed+1"] - means["saets_unsteered_seed+1"],
    }
    t0 = time.perf_counter()
    cfg = EffectConfig(
        prompts=tuple(prompts),
        seq_len=seq_len,
        temperature=temp,
        top_k=top_k,
        top_p=top_p,
        sink_ratio=protocol.get("sink_ratio"),
        rollouts=rollouts,
        baseline_multiplier=1,
    )
    est = EffectEstimator(model, sae, config=cfg, seed=seed + 2)
    eff["saets_estimator"] = measure_vector(est, vec, scale, Target.of(feature)).effect
    seconds["saets_estimator"] = time.perf_counter() - t0

    def cos(a: str, b: str) -> float:
        return float(torch.nn.functional.cosine_similarity(eff[a], eff[b], dim=0))

    def unsteered_gap(a: str, b: str) -> dict[str, float]:
        return {
            "target": float(means[a][feature] - means[b][feature]),
            "norm": float((means[a] - means[b]).norm()),
        }

    def identical(a: str, b: str) -> float:
        return float((gens[a] == gens[b]).all(1).float().mean())

    return {
        "feature": feature,
        "scale": scale,
        "rollouts": rollouts,
        "sequences_per_run": len(prompts) * rollouts,
        "protocol": {k: protocol.get(k) for k in ("seq_len", "temperature", "top_k", "top_p")},
        "target_activation": {k: float(m[feature]) for k, m in means.items()},
        "target_effect": {k: float(e[feature]) for k, e in eff.items()},
        "effect_norm": {k: float(e.norm()) for k, e in eff.items()},
        "cosine": {
            "llamacpp_vs_saets": cos("llamacpp", "saets"),
            "saets_vs_saets_seed+1": cos("saets", "saets_seed+1"),
            "llamacpp_vs_saets_seed+1": cos("llamacpp", "saets_seed+1"),
            "saets_vs_saets_estimator": cos("saets", "saets_estimator"),
            "llamacpp_vs_saets_estimator": cos("llamacpp", "saets_estimator"),
        },
        "effect_difference_norm": {
            "llamacpp_vs_saets": float((eff["llamacpp"] - eff["saets"]).norm()),
            "saets_seed+1_vs_saets": float((eff["saets_seed+1"] - eff["saets"]).norm()),
        },
        "unsteered_difference": {
            "llamacpp_vs_saets": unsteered_gap("llamacpp_unsteered", "saets_unsteered"),
            "saets_seed+1_vs_saets": unsteered_gap("saets_unsteered_seed+1", "saets_unsteered"),
        },
        "identical_sequences": {
            "unsteered_llamacpp_vs_saets": identical("llamacpp_unsteered", "saets_unsteered"),
            "steered_llamacpp_vs_saets": identical("llamacpp_steered", "saets_steered"),
            **{f"{k}_llamacpp_f32_vs_saets": v for k, v in exact_same.items()},
            "llamacpp_f32_sequences_per_run": len(prompts) * min(exact_rollouts, rollouts),
        },
        "examples": {
            k: [model.to_string(gens[k][i]) for i in (3 * rollouts, 7 * rollouts)]
            for k in ("saets_unsteered", "saets_steered", "llamacpp_steered")
        },
        "seconds": seconds,
        "_effects": eff,  # for the plot and the top-feature table; not written to the JSON
    }


# -- main -------------------------------------------------------------------------------------


def pick_feature(model: Any, sae: Any) -> int:
    """The top wedding feature by ``sae_ts.find_features`` on short hand-written texts."""
    from sae_ts import find_features

    return find_features(model, sae, list(WEDDING), list(NEUTRAL), top=3)[0][0]


def plot(res: dict[str, Any], path: Path) -> None:
    """(a) RMS logit difference against the direction offset; (b) the two effect vectors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = ("C0", "C1", "C2", "C3", "C4")
    ticks: set[int] = set()
    for backend, style in (("q4_1", "-"), ("f32", ":")):
        m = res["mapping"][backend]
        for c, (L, row) in zip(colours, m["layers"].items()):
            ds = sorted(row["offsets"], key=int)
            ticks |= {int(d) for d in ds}
            a.plot(
                [int(d) for d in ds],
                [row["offsets"][d]["rms"] for d in ds],
                "o" + style,
                color=c,
                label=f"{backend}: vs sae-ts at blocks.{L}",
            )
        a.axhline(m["unsteered"]["rms"], color="k", ls=style, lw=1, label=f"{backend}: unsteered")
    a.set_yscale("log")
    a.set_xticks(sorted(ticks))
    a.set_xlabel("llama.cpp direction index minus L")
    a.set_ylabel("RMS logit difference from sae-ts")
    a.set_title("(a) direction.L matches blocks.L.hook_resid_post")
    a.legend(fontsize=7)
    e = res["effect"]
    eff, f = e["_effects"], e["feature"]
    x, y = eff["saets"].numpy(), eff["llamacpp"].numpy()
    b.scatter(x, y, s=4, alpha=0.5, label="SAE features")
    b.scatter([x[f]], [y[f]], s=40, c="r", label=f"target feature {f}")
    lim = [float(min(x.min(), y.min())), float(max(x.max(), y.max()))]
    b.plot(lim, lim, "k--", lw=1)
    b.set_xlabel("sae-ts: effect (steered - unsteered)")
    b.set_ylabel("llama.cpp (Q4_1): effect read by sae-ts's SAE")
    b.set_title(
        f"(b) SAE effect, cosine {e['cosine']['llamacpp_vs_saets']:.3f} "
        f"(sae-ts seed vs seed: {e['cosine']['saets_vs_saets_seed+1']:.3f})"
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 12, 29])
    ap.add_argument("--offsets", type=int, nargs="+", default=[-2, -1, 0, 1, 2])
    ap.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="(a): scale = this x the typical residual norm at each layer",
    )
    ap.add_argument("--rollouts", type=int, default=16, help="(b): rollouts per prompt")
    ap.add_argument(
        "--f32-rollouts",
        type=int,
        default=4,
        help="(b): rollouts per prompt also run by llama.cpp on the F32 file",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/llamacpp_parity.json"))
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)
    command = f"python benchmarks/llamacpp_parity.py {shlex.join(sys.argv[1:])}".strip()
    print(f"command: {command}\nseed: {args.seed}", flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import llama_cpp

    import sae_ts
    from sae_ts.effect_model import load_default_effect_model
    from sae_ts.effects import typical_residual_norm
    from sae_ts.models import EMBEDDED_MODEL, embedded_gguf_path, load_hf_model

    t_start = time.perf_counter()
    model, sae, hook = sae_ts.load_default()
    hf, _ = load_hf_model()
    gguf = embedded_gguf_path()
    em = load_default_effect_model()
    feature = pick_feature(model, sae)
    vec = sae_ts.solve(em, {feature: 1.0}, method="targeted").float()
    vec = vec / vec.norm()
    scales = {
        L: round(args.fraction * typical_residual_norm(model, f"blocks.{L}.hook_resid_post"), 2)
        for L in args.layers
    }
    res: dict[str, Any] = {
        "command": command,
        "seed": args.seed,
        "args": {k: str(v) for k, v in vars(args).items()},
        "versions": {
            "llama_cpp_python": llama_cpp.__version__,
            "sae_ts": sae_ts.__version__,
            "torch": torch.__version__,
        },
        "gguf": {"file": gguf.name, "sha256": EMBEDDED_MODEL.gguf_sha256},
        "vector": f"unit solve(load_default_effect_model(), {{{feature}: 1.0}}, 'targeted')",
        "feature": feature,
        "mapping": {"prompts": list(MAPPING_PROMPTS), "scales": scales},
    }
    t0 = time.perf_counter()
    ref = saets_reference(model, hf, vec, scales, MAPPING_PROMPTS)
    res["mapping"]["saets_vs_hf"] = {
        str(L): diffs(ref["tl"][L], ref["hf"][L]) for L in [None, *scales]
    }
    with tempfile.TemporaryDirectory() as tmp:
        backends = {
            # the very GGUF, llama.cpp's defaults (F16 KV cache): what a user runs
            "q4_1": (gguf, {}),
            # its F32 dequantisation (sae-ts's weights), F32 KV cache: arithmetic aside
            "f32": (f32_gguf(gguf, Path(tmp) / "f32.gguf"), {"type_k": 0, "type_v": 0}),
        }
        cpps = {}
        for name, (path, kwargs) in backends.items():
            cpp = cpps[name] = LlamaCpp(path, threads=args.threads, **kwargs)
            res["mapping"][name] = mapping_check(
                model, cpp, vec, ref, scales, args.offsets, Path(tmp)
            )
            m = res["mapping"][name]
            print(
                f"(a) {name}: unsteered RMS logit difference {m['unsteered']['rms']:.3g}",
                flush=True,
            )
            for L, row in m["layers"].items():
                cells = "  ".join(f"d={d}: {v['rms']:.3g}" for d, v in row["offsets"].items())
                print(
                    f"    L={L} scale={row['scale']}: {cells}  best d={row['best_offset']}",
                    flush=True,
                )
        res["mapping"]["seconds"] = time.perf_counter() - t0
        scale = float(em.record["scale"])
        t0 = time.perf_counter()
        res["effect"] = effect_check(
            model,
            sae,
            hook,
            cpps["q4_1"],
            vec,
            scale,
            feature,
            em.record["config"],
            args.rollouts,
            args.seed,
            Path(tmp),
            exact=cpps["f32"],
            exact_rollouts=args.f32_rollouts,
        )
        res["effect"]["seconds"]["total"] = time.perf_counter() - t0
        for cpp in cpps.values():
            cpp.close()
    e = res["effect"]
    print(
        f"(b) feature {feature}, scale {scale:.2f}: target effect sae-ts "
        f"{e['target_effect']['saets']:.3f}, llama.cpp {e['target_effect']['llamacpp']:.3f}, "
        f"sae-ts seed+1 {e['target_effect']['saets_seed+1']:.3f}, sae-ts estimator "
        f"{e['target_effect']['saets_estimator']:.3f}; cosine llama.cpp vs sae-ts "
        f"{e['cosine']['llamacpp_vs_saets']:.3f} (sae-ts vs its seed+1: "
        f"{e['cosine']['saets_vs_saets_seed+1']:.3f}); llama.cpp on the F32 file: "
        f"{e['identical_sequences'].get('steered_llamacpp_f32_vs_saets', float('nan')):.0%} of "
        "steered sequences the same as sae-ts's",
        flush=True,
    )
    res["seconds"] = time.perf_counter() - t_start
    if args.plot:
        plot(res, args.plot)
    effects = e.pop("_effects")
    top = torch.topk(effects["saets"].abs(), 10).indices.tolist()
    e["top_features"] = {
        str(i): {k: round(float(v[i]), 4) for k, v in effects.items()} for i in top
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json} ({res['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
