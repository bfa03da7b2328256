#!/usr/bin/env bash
# The CUDA path on both embedded models: the estimator, the official-style loop and one
# comparison task, with timings. Run on a machine with a CUDA GPU, from the repository root:
#
#   DEVICE=cuda bash benchmarks/gpu_check.sh 2>&1 | tee runs/gpu_check.log
#
# It has not run on a GPU yet (none was at hand); its timings go in the README once it has.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
PY=${PY:-.venv/bin/python}
TASK=${TASK:-../shared/datasets/concepts/saets/wedding}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
for MODEL in smollm2-135m gemma-3-270m; do
  # about 0.3 x each model's per-token residual norm at blocks.12 (SmolLM2 ~144, Gemma ~13,700)
  SCALE=$([ "$MODEL" = smollm2-135m ] && echo 40 || echo 4000)
  echo "== $MODEL: estimator vs the official loop (effects_throughput.py)"
  /usr/bin/time -v "$PY" benchmarks/effects_throughput.py --model "$MODEL" --device "$DEVICE" \
    --vectors 16 --vectors-official 1 --scale "$SCALE" --json "$OUT/throughput_$MODEL.json" \
    2> >(grep -E "Elapsed|Maximum resident" >&2)
  echo "== $MODEL: sae-ts estimate, 64 decoder rows"
  /usr/bin/time -f "%e s wall" .venv/bin/sae-ts estimate --model "$MODEL" --device "$DEVICE" \
    --candidates decoder --n 64 --out "$OUT/estimate_$MODEL"
  if "$PY" -c "from sae_ts.effect_model import load_default_effect_model as f; f('$MODEL')" 2>/dev/null; then
    echo "== $MODEL: one comparison task (quick budget)"
    /usr/bin/time -f "%e s wall" .venv/bin/sae-ts compare --model "$MODEL" --device "$DEVICE" \
      --task "$TASK" --budget quick --no-validation --out-dir "$OUT/compare_$MODEL"
  else
    echo "== $MODEL: no shipped effect model yet; comparison skipped"
  fi
done
