#!/usr/bin/env bash
# One prepared check of the GPU path (CUDA, bf16, DeepSpeed ZeRO-3 over NCCL), under 8 minutes on a
# single GPU: workflows/gpu-smoke.yaml is sampled, trained for a few steps, evaluated and served,
# one completion is requested, and the figures are printed and written to RUN/gpu_smoke.json.
#
#   bash bench/gpu_smoke.sh [RUN_DIR]      # VBON=... to use another vbon command
set -euo pipefail
cd "$(dirname "$0")/.."
VBON=${VBON:-vbon}
RUN=${1:-$(mktemp -d)}
WORKFLOW=workflows/gpu-smoke.yaml
PORT=8000

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke: torch sees no CUDA device; run it on a GPU machine with a CUDA build of torch" >&2
  exit 2
fi

started=$(date +%s)
"$VBON" run "$WORKFLOW" --run-dir "$RUN" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 480); do  # sampling, training and evaluation come first: up to 8 minutes
  curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "gpu_smoke: vbon run ended before serving" >&2; exit 1; }
  sleep 1
done
reply=$(curl -sf "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "gpu-smoke", "prompt": "This film was", "max_tokens": 24, "seed": 0}')
kill -TERM "$server"
wait "$server"
trap - EXIT

python - "$RUN/gpu-smoke" "$(( $(date +%s) - started ))" "$reply" <<'PY'
import json, sys
from pathlib import Path

from vbon.sampling.stage import read_samples

run, seconds, reply = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
stages = json.loads((run / "run.json").read_text())["stages"]
steps = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
steps = [s for s in steps if "step_s" in s]
rows = json.loads((run / "eval" / "results.json").read_text())["rows"]
samples = sum(len(r) for r in read_samples(run / "samples").column("rewards").to_pylist())
policy = next(r for r in rows if r["kind"] == "policy")
figures = {
    "total_s": seconds,
    "sampling_samples_per_s": samples / stages["sampling"]["seconds"],
    "train_step_s": sum(s["step_s"] for s in steps) / len(steps),
    "train_tokens_per_s": sum(s["tokens_per_s"] for s in steps) / len(steps),
    "peak_gpu_mem_mib": max(s["peak_mem_mib"] for s in steps),
    "policy_win_rate": policy["win_rate"]["mean"],
    "policy_kl": policy["kl"]["mean"],
    "served_text": reply["choices"][0]["text"],
}
(run.parent / "gpu_smoke.json").write_text(json.dumps(figures, indent=2))
print(json.dumps(figures, indent=2))
PY
