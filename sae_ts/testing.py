"""Tiny models and SAEs for tests and examples: fast, random, and offline.

:func:`tiny_model` is a randomly initialised small Llama-architecture HookedTransformer with a
small byte-level BPE tokenizer shipped in the package (``assets/tiny-tokenizer``: 1,024 tokens
trained on Python's ``pydoc_data`` text, with SmolLM2's special tokens and chat template), so it
needs no network. :func:`tiny_sae` is a small sae-lens SAE for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from .backends import boot_bridge
from .loading import Loaded
from .models import (
    EMBEDDED_MODEL,
    _llama_hooked,
    fast_weight_layout,
    hooked_from_config,
    prepare_tokenizer,
)
from .types import LanguageModel

__all__ = ["TINY_TOKENIZER_DIR", "tiny_loaded", "tiny_model", "tiny_sae", "tiny_tokenizer"]

TINY_TOKENIZER_DIR: Path = Path(__file__).resolve().parent / "assets" / "tiny-tokenizer"


def tiny_tokenizer() -> Any:
    """The shipped tiny tokenizer (a fresh copy), prepared as sae-ts prepares SmolLM2's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    return prepare_tokenizer(tok, EMBEDDED_MODEL.document_start_token)


def tiny_model(
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    tokenizer: Any | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LanguageModel:
    """A randomly initialised small Llama-architecture ``HookedTransformer`` for fast tests (no network).

    Uses :func:`tiny_tokenizer` when no tokenizer is given.
    """
    if tokenizer is None:
        tokenizer = tiny_tokenizer()
    n_heads = 4
    fields = dict(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=d_model * 2,
        n_layers=n_layers,
        n_ctx=256,
        d_vocab=len(tokenizer),
        act_fn="silu",
        n_key_value_heads=2,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_model // n_heads,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        seed=seed,
        model_name=f"tiny-llama-{n_layers}l-{d_model}d-seed{seed}",
    )
    return hooked_from_config(fields, tokenizer, device, dtype)


def tiny_sae(
    d_in: int = 64,
    hook_name: str = "blocks.0.hook_resid_post",
    d_sae: int = 48,
    seed: int = 0,
    architecture: Literal["standard", "topk", "jumprelu"] = "standard",
    k: int = 8,
    **metadata: Any,
) -> Any:
    """A small random sae-lens SAE reading ``hook_name`` (in eval mode).

    ``"standard"``: a ReLU SAE with encoder ~ N(0, 0.3²), tied decoder and encoder bias -0.1, so
    latents fire sparsely on a tiny model's activations. ``"topk"``: a TopK SAE with sae-lens's
    initialisation and ``k`` active latents. ``"jumprelu"``: as ``"standard"`` with zero encoder
    bias and per-latent thresholds drawn from U(0.05, 0.6), so the threshold decides which latents
    fire. Extra keyword arguments go into the metadata (e.g.
    ``sink_reference_norm=20.0``, ``model_name="t"``).
    """
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=hook_name, **metadata)
    torch.manual_seed(seed)
    if architecture == "topk":
        return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta)).eval()
    if architecture == "jumprelu":
        jr = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
        with torch.no_grad():
            jr.W_enc.normal_(0, 0.3)
            jr.W_dec.copy_(jr.W_enc.T)
            jr.b_enc.zero_()
            jr.threshold.uniform_(0.05, 0.6)
        return jr.eval()
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(-0.1)
    return sae.eval()


def tiny_loaded(
    seed: int = 0, d_sae: int = 48, hook_name: str = "blocks.0.hook_resid_post"
) -> Loaded:
    """:func:`tiny_model` and a :func:`tiny_sae` for it, as :func:`sae_ts.load_default` returns.

    A module-level loader, so a :class:`~sae_ts.executors.RayExecutor` can call it in a worker.
    """
    model = tiny_model(seed=seed)
    return Loaded(model, tiny_sae(model.cfg.d_model, hook_name, d_sae=d_sae), hook_name)


def tiny_hf_llama(
    seed: int = 0, n_layers: int = 2, d_model: int = 64, tokenizer: Any | None = None
) -> Any:
    """A randomly initialised small Hugging Face ``LlamaForCausalLM`` (no network), for tests of
    the ``TransformerBridge`` backend; :func:`tiny_pair` wraps it both ways."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_pair(seed: int = 0, n_layers: int = 2, d_model: int = 64) -> tuple[Any, Any]:
    """The same tiny random Llama as a ``HookedTransformer`` and as a ``TransformerBridge``."""
    tok = tiny_tokenizer()
    hf = tiny_hf_llama(seed, n_layers, d_model, tok)
    hooked = fast_weight_layout(
        _llama_hooked(hf, tok, f"tiny-llama-seed{seed}", "cpu", torch.float32)
    )
    bridge = boot_bridge("tiny-llama", hf_model=hf, tokenizer=tok)
    return hooked.eval(), bridge
