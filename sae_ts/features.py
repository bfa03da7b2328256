"""The feature browser: top-activating contexts of every SAE latent, as HTML and JSON.

``sae-ts features`` encodes text with an SAE (sink positions excluded), keeps for every latent its
``n_top`` highest-activating tokens with their surrounding context, its activation frequency and
its mean activation when firing, and writes

* ``features.json`` — the whole index;
* ``latents/NNNNN.json`` — one file per live latent;
* ``index.html`` — a self-contained page (inline CSS and JS, no network) with a search box that
  finds latents by number or by a word in their top contexts, each context shown with its
  max-activating token highlighted.

:func:`search_features` is the same look-up in Python.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import write_json_atomic
from .backends import run_with_cache
from .errors import ConfigError, MissingFileError
from .sae import check_pair, sink_positions
from .training.activations import ActivationCache
from .types import SAELike

__all__ = [
    "FeatureIndexBuilder",
    "build_feature_index",
    "cache_batches",
    "load_feature_index",
    "search_features",
    "write_feature_browser",
]

INDEX_FORMAT = "sae-ts-feature-index/1"


@dataclass
class _Batch:
    """Non-sink activations of a batch with where they came from."""

    acts: torch.Tensor  # [n, d_in]
    seq: torch.Tensor  # [n] window index
    pos: torch.Tensor  # [n] position in the window


class FeatureIndexBuilder:
    """Streams feature activations and keeps per-latent statistics and top examples."""

    def __init__(self, d_sae: int, n_top: int = 10):
        if d_sae <= 0 or n_top <= 0:
            raise ConfigError(f"d_sae and n_top must be positive, got {d_sae}, {n_top}")
        self.d_sae = d_sae
        self.n_top = n_top
        self.top_vals = torch.full((n_top, d_sae), -1.0)
        self.top_seq = torch.full((n_top, d_sae), -1, dtype=torch.int64)
        self.top_pos = torch.full((n_top, d_sae), -1, dtype=torch.int64)
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.n_tokens = 0

    def add(self, feats: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> None:
        """Add feature activations ``[n, d_sae]`` of tokens at window ``seq``, position ``pos``."""
        if feats.ndim != 2 or feats.shape[1] != self.d_sae:
            raise ConfigError(f"feats must be [n, {self.d_sae}], got {tuple(feats.shape)}")
        if seq.shape != (feats.shape[0],) or pos.shape != (feats.shape[0],):
            raise ConfigError("seq and pos must be [n] like feats")
        feats = feats.detach().float().cpu()
        fired = feats > 0
        self.fire_count += fired.sum(0)
        self.act_sum += feats.double().sum(0)
        self.n_tokens += feats.shape[0]
        # One example per window per latent: keep each window's best token only.
        k = min(self.n_top, feats.shape[0])
        vals, idx = feats.topk(k, dim=0)
        seq_c = seq.to(torch.int64)[idx]
        pos_c = pos.to(torch.int64)[idx]
        all_vals = torch.cat([self.top_vals, vals])
        all_seq = torch.cat([self.top_seq, seq_c])
        all_pos = torch.cat([self.top_pos, pos_c])
        # Drop repeated windows (keeping the highest), then take the top n.
        order = all_vals.argsort(dim=0, descending=True)
        all_vals = all_vals.gather(0, order)
        all_seq = all_seq.gather(0, order)
        all_pos = all_pos.gather(0, order)
        dup = torch.zeros_like(all_vals, dtype=torch.bool)
        for i in range(1, all_seq.shape[0]):
            dup[i] = ((all_seq[:i] == all_seq[i]) & (all_seq[i] >= 0)).any(0)
        all_vals = all_vals.masked_fill(dup, -1.0)
        vals2, order2 = all_vals.topk(self.n_top, dim=0)
        self.top_vals = vals2
        self.top_seq = all_seq.gather(0, order2)
        self.top_pos = all_pos.gather(0, order2)

    def finish(
        self,
        windows: torch.Tensor,
        tokenizer: Any,
        left: int = 12,
        right: int = 4,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The index: per live latent its frequency, mean activation and top contexts."""
        if self.n_tokens == 0:
            raise ConfigError("no tokens were added to the feature index")
        latents: dict[str, Any] = {}
        cache: dict[int, str] = {}

        def piece(tok_id: int) -> str:
            if tok_id not in cache:
                cache[tok_id] = tokenizer.decode([tok_id])
            return cache[tok_id]

        for j in range(self.d_sae):
            n_fire = int(self.fire_count[j])
            if n_fire == 0:
                continue
            contexts = []
            for r in range(self.n_top):
                val = float(self.top_vals[r, j])
                s, p = int(self.top_seq[r, j]), int(self.top_pos[r, j])
                if val <= 0 or s < 0:
                    break
                lo, hi = max(1, p - left), min(windows.shape[1], p + right + 1)
                ids = [int(t) for t in windows[s, lo:hi]]
                contexts.append(
                    {
                        "activation": round(val, 3),
                        "tokens": [piece(t) for t in ids],
                        "max_index": p - lo,
                        "window": s,
                        "position": p,
                    }
                )
            latents[str(j)] = {
                "latent": j,
                "frequency": n_fire / self.n_tokens,
                "mean_activation": float(self.act_sum[j]) / n_fire,
                "max_activation": float(self.top_vals[0, j]),
                "contexts": contexts,
            }
        return {
            "format": INDEX_FORMAT,
            "n_tokens": self.n_tokens,
            "d_sae": self.d_sae,
            "n_live": len(latents),
            "n_top": self.n_top,
            "meta": meta or {},
            "latents": latents,
        }


def _batches_from_model(
    model: Any, sae: SAELike, windows: torch.Tensor, batch_size: int, sink_ratio: float | None
) -> Iterator[_Batch]:
    hook = check_pair(model, sae)
    layer = int(hook.split(".")[1])
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b in range(0, windows.shape[0], batch_size):
            toks = windows[b : b + batch_size].to(device)
            _, cache = run_with_cache(model, toks, names_filter=hook, stop_at_layer=layer + 1)
            acts = cache[hook]
            keep = ~sink_positions(sae, acts, sink_ratio)
            idx = keep.nonzero()
            yield _Batch(acts[keep], idx[:, 0] + b, idx[:, 1])


def build_feature_index(
    sae: SAELike,
    batches: Iterable[_Batch] | None = None,
    *,
    windows: torch.Tensor,
    tokenizer: Any,
    model: Any | None = None,
    n_top: int = 10,
    batch_size: int = 8,
    sink_ratio: float | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build the feature index of ``sae`` over token ``windows`` ``[n, context]``.

    Activations come from ``batches`` (e.g. an activation cache, sinks already removed) or, if
    None, from running ``model`` on ``windows`` (sink positions removed with the SAE's rule).
    """
    from tqdm.auto import tqdm

    if windows.ndim != 2:
        raise ConfigError(f"windows must be [n, context], got {tuple(windows.shape)}")
    if batches is None:
        if model is None:
            raise ConfigError("give either activation batches or a model to run")
        batches = _batches_from_model(model, sae, windows, batch_size, sink_ratio)
    builder = FeatureIndexBuilder(sae.cfg.d_sae, n_top)
    with torch.inference_mode():
        for batch in tqdm(batches, desc="feature index", disable=not progress):
            if batch.acts.shape[-1] != sae.cfg.d_in:
                raise ConfigError(
                    f"d_in mismatch: activations have d={batch.acts.shape[-1]}, SAE d_in={sae.cfg.d_in}"
                )
            feats = sae.encode(batch.acts.to(sae.W_enc.dtype))
            builder.add(feats, batch.seq, batch.pos)
    return builder.finish(windows, tokenizer, meta=meta)


def _context_text(ctx: dict[str, Any]) -> str:
    return "".join(ctx["tokens"])


def search_features(index: dict[str, Any], word: str, min_contexts: int = 1) -> list[int]:
    """Latents whose top contexts contain ``word`` (case-insensitive, as a whole word).

    Sorted by how many top contexts contain it at their max-activating token first, then by how
    many contain it anywhere, then by latent number. ``word`` may also be a latent number.
    """
    word = word.strip()
    if not word:
        raise ConfigError("empty search word")
    latents = index.get("latents")
    if not isinstance(latents, dict):
        raise ConfigError("not a feature index (no 'latents')")
    if word.isdigit():
        return [int(word)] if word in latents else []
    pat = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
    scored = []
    for key, lat in latents.items():
        ctxs = lat["contexts"]
        n_any = sum(1 for c in ctxs if pat.search(_context_text(c)))
        if n_any < min_contexts:
            continue
        n_max = sum(1 for c in ctxs if pat.search(c["tokens"][c["max_index"]]))
        scored.append((-n_max, -n_any, int(key)))
    return [j for _, _, j in sorted(scored)]


def load_feature_index(path: str | Path) -> dict[str, Any]:
    """Load a ``features.json`` written by :func:`write_feature_browser` (a file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "features.json"
    if not p.exists():
        raise MissingFileError(f"no feature index at {p}")
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"corrupt feature index {p}: {e}") from e
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        fmt = index.get("format") if isinstance(index, dict) else None
        raise ConfigError(f"{p} is not a sae-ts feature index (format {fmt!r})")
    return dict(index)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:10px 16px}
h1{font-size:18px;margin:0 0 6px}
#q{width:340px;font-size:15px;padding:5px 8px}
#info{color:#666;margin-left:10px}
main{padding:10px 16px}
.lat{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:10px 0;padding:8px 12px}
.lat h2{font-size:15px;margin:0 0 4px}
.stats{color:#666;font-size:12px;margin-left:8px;font-weight:normal}
.ctx{font-family:ui-monospace,monospace;font-size:12.5px;white-space:pre-wrap;margin:2px 0;
 border-left:3px solid #eee;padding-left:6px}
.ctx .a{color:#888;display:inline-block;width:58px}
mark{background:#ffb347;border-radius:3px;padding:0 1px}
"""

_JS = """
const data = JSON.parse(document.getElementById('data').textContent);
const lats = Object.values(data.latents);
const q = document.getElementById('q'), out = document.getElementById('out'),
      info = document.getElementById('info');
const esc = s => s.replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
const vis = s => s.replace(/\\n/g, '\\u21b5');
function render(list) {
  info.textContent = list.length + ' of ' + lats.length + ' live latents' +
    (list.length > 60 ? ' (first 60 shown)' : '');
  out.innerHTML = list.slice(0, 60).map(l => {
    const ctx = l.contexts.map(c => '<div class="ctx"><span class="a">' +
      c.activation.toFixed(2) + '</span>' + c.tokens.map((t, i) => i === c.max_index ?
      '<mark>' + esc(vis(t)) + '</mark>' : esc(vis(t))).join('') + '</div>').join('');
    return '<div class="lat"><h2>Latent ' + l.latent + '<span class="stats">freq ' +
      (100 * l.frequency).toFixed(3) + '% · mean act ' + l.mean_activation.toFixed(2) +
      ' · max ' + l.max_activation.toFixed(2) + '</span></h2>' + ctx + '</div>';
  }).join('');
}
function search() {
  const w = q.value.trim();
  if (!w) { render(lats); return; }
  if (/^\\d+$/.test(w)) { render(lats.filter(l => String(l.latent) === w)); return; }
  const re = new RegExp('(^|[^\\\\w])' + w.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&') +
    '(?![\\\\w])', 'i');
  const scored = [];
  for (const l of lats) {
    let nAny = 0, nMax = 0;
    for (const c of l.contexts) {
      if (re.test(c.tokens.join(''))) nAny++;
      if (re.test(c.tokens[c.max_index])) nMax++;
    }
    if (nAny) scored.push([nMax, nAny, l]);
  }
  scored.sort((a, b) => b[0] - a[0] || b[1] - a[1] || a[2].latent - b[2].latent);
  render(scored.map(s => s[2]));
}
q.addEventListener('input', search);
search();
"""


def _html(index: dict[str, Any], title: str) -> str:
    data = json.dumps(index, separators=(",", ":")).replace("</", "<\\/")
    meta = index.get("meta", {})
    sub = html.escape(
        f"{meta.get('sae', '')} · {meta.get('hook_name', '')} · {index['n_live']} live of "
        f"{index['d_sae']} latents · {index['n_tokens']:,} tokens (attention sinks excluded)"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div style='color:#666;font-size:12px'>{sub}</div>"
        "<input id='q' placeholder='search a word, or a latent number' autofocus>"
        "<span id='info'></span></header><main id='out'></main>"
        f"<script id='data' type='application/json'>{data}</script><script>{_JS}</script>"
        "</body></html>\n"
    )


def write_feature_browser(index: dict[str, Any], out_dir: str | Path, title: str = "") -> Path:
    """Write ``index.html``, ``features.json`` and ``latents/NNNNN.json`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "features.json", index)
    lat_dir = out / "latents"
    lat_dir.mkdir(exist_ok=True)
    for key, lat in index["latents"].items():
        (lat_dir / f"{int(key):05d}.json").write_text(json.dumps(lat), encoding="utf-8")
    page = out / "index.html"
    page.write_text(_html(index, title or "sae-ts feature browser"), encoding="utf-8")
    return page


def cache_batches(cache_dirs: Sequence[Path], offsets: Sequence[int]) -> Iterator[_Batch]:
    """Batches of cached non-sink activations (activation caches of ``sae-ts train-sae``), with
    window indices shifted by ``offsets`` so several caches index one concatenated window set."""
    for root, off in zip(cache_dirs, offsets):
        cache = ActivationCache(root)
        for p in cache.chunk_paths():
            c = cache.load_chunk(p)
            for i in range(0, c["acts"].shape[0], 8192):
                yield _Batch(
                    c["acts"][i : i + 8192].float(),
                    c["seq"][i : i + 8192].to(torch.int64) + off,
                    c["pos"][i : i + 8192].to(torch.int64),
                )
