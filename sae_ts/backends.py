"""Model backends: TransformerLens's ``HookedTransformer`` and ``TransformerBridge``, one interface.

TransformerLens 3.9 recommends ``TransformerBridge.boot_transformers(...)`` over
``HookedTransformer`` (deprecated, gone in TransformerLens 4). sae-ts accepts either: both have
``cfg``, ``tokenizer``, ``to_tokens``, ``hook_dict`` with the same hook names
(``blocks.L.hook_resid_post`` is an alias on the bridge) and ``run_with_cache``. They differ in
the KV cache, which this module hides behind :func:`new_kv_cache` and :func:`forward_cached`,
used by the one generation loop (:func:`sae_ts.generation.generate`).

**Why cached steering through a bridge went wrong** (issue #30). transformers 5 passes the KV
cache to each attention module as ``cache=``; TransformerLens 3.9's attention bridge reads only
``past_key_values=`` (or ``layer_past=``), so at every cached step each layer attended to the new
token alone and ignored the prompt. Unsteered cached generation was already broken
("I think the---------"), uncached was right; the steering hook was never the cause.
:func:`boot_bridge` adds a forward pre-hook to every attention bridge that hands the cache on under
the name the bridge reads (:func:`_bridge_cache_compat`); it is a no-op where the bridge already
gets ``past_key_values``. ``tests/test_backends.py`` pins it.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "BACKENDS",
    "Backend",
    "boot_bridge",
    "forward",
    "forward_cached",
    "is_bridge",
    "new_kv_cache",
    "pad_mask",
    "run_with_cache",
    "run_with_hooks",
]

Backend: TypeAlias = Literal["hooked", "bridge"]
"""``"hooked"``: ``HookedTransformer`` (the default); ``"bridge"``: ``TransformerBridge``."""

BACKENDS: tuple[Backend, ...] = ("hooked", "bridge")


def check_backend(backend: str) -> Backend:
    """``backend`` if it is one of :data:`BACKENDS`, else a clear error."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    return backend


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (else a HookedTransformer)."""
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def _bridge_cache_compat(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


def boot_bridge(
    name: str,
    hf_model: Any | None = None,
    tokenizer: Any | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TransformerBridge:
    """``TransformerBridge.boot_transformers`` with the KV-cache fix of this module.

    ``name`` is the model's hub name (e.g. ``"HuggingFaceTB/SmolLM2-135M-Instruct"``). With
    ``hf_model`` given, TransformerLens reads the config from that model and needs no hub. With
    ``tokenizer`` given, the bridge keeps it as it is (sae-ts prepares the embedded models'
    tokenizers so that its document-start token is the BOS).
    """
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, device=str(device), dtype=dtype,
        tokenizer=copy.deepcopy(tokenizer) if tokenizer is not None else None,
    )  # fmt: skip
    if tokenizer is not None:
        # The boot re-wires the tokenizer to prepend its own BOS (SmolLM2: <|im_start|>, a chat
        # marker). Put back the caller's: sae-ts prepends its document-start token as text, as
        # it does for a HookedTransformer (sae_ts.models.attach_tokenizer).
        bridge._tokenizer = tokenizer
        bridge.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    for block in bridge.blocks:
        block.attn.register_forward_pre_hook(_bridge_cache_compat, with_kwargs=True)
    bridge.eval()
    return bridge


def new_kv_cache(model: Any, batch: int) -> Any:
    """An empty KV cache of the model's own kind for ``batch`` rows."""
    if is_bridge(model):
        from transformers import DynamicCache

        return DynamicCache(config=model.original_model.config)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)


def _cache_kwarg(model: Any) -> str:
    """What the wrapped Hugging Face model calls its cache argument (transformers 5: ``cache``)."""
    hf_class: Any = type(model.original_model)
    return _cache_kwarg_of(hf_class)


@functools.cache
def _cache_kwarg_of(hf_class: Any) -> str:
    # looked up once per class: forward_cached runs at every generated token
    params = inspect.signature(hf_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_cached(
    model: Any,
    tokens: torch.Tensor,
    cache: Any,
    attention_mask: torch.Tensor,
    stop_at_layer: int | None = None,
) -> Any:
    """One forward pass that reads and extends ``cache``; returns the logits.

    ``attention_mask`` covers the whole sequence so far (cached and new tokens), 1 on real
    tokens, so left-padded rows keep their positions on both backends.
    """
    if is_bridge(model):
        return model(
            tokens,
            attention_mask=attention_mask,
            use_cache=True,
            return_type="logits",
            stop_at_layer=stop_at_layer,
            **{_cache_kwarg(model): cache},
        )
    # HookedTransformer keeps the cached part of the mask itself and wants the new tokens' part;
    # with stop_at_layer it returns the residual stream there, whatever return_type says
    new = attention_mask[:, -tokens.shape[1] :]
    return model(
        tokens, past_kv_cache=cache, attention_mask=new, return_type="logits",
        stop_at_layer=stop_at_layer,
    )  # fmt: skip


def pad_mask(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """TransformerLens's rule for left-padded input given without a mask (leading pads masked).

    A ``HookedTransformer`` applies it itself; a bridge hands the tokens to Hugging Face unmasked,
    so :func:`run_with_cache`, :func:`run_with_hooks` and :func:`forward` pass this mask.
    """
    from transformer_lens.utilities import get_attention_mask

    if model.tokenizer is None or getattr(model.tokenizer, "pad_token_id", None) is None:
        return torch.ones_like(tokens)
    prepend_bos = bool(getattr(model.cfg, "default_prepend_bos", True))
    return get_attention_mask(model.tokenizer, tokens, prepend_bos, padding_side="left")


def _with_mask(model: Any, tokens: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    if is_bridge(model) and isinstance(tokens, torch.Tensor) and "attention_mask" not in kwargs:
        kwargs = {**kwargs, "attention_mask": pad_mask(model, tokens)}
    return kwargs


def run_with_cache(model: Any, tokens: Any, **kwargs: Any) -> Any:
    """``model.run_with_cache`` with the same padding rule on both backends."""
    return model.run_with_cache(tokens, **_with_mask(model, tokens, kwargs))


def run_with_hooks(model: Any, tokens: Any, **kwargs: Any) -> Any:
    """``model.run_with_hooks`` with the same padding rule on both backends."""
    return model.run_with_hooks(tokens, **_with_mask(model, tokens, kwargs))


def forward(model: Any, tokens: Any, **kwargs: Any) -> Any:
    """``model(tokens, ...)`` with the same padding rule on both backends."""
    return model(tokens, **_with_mask(model, tokens, kwargs))
