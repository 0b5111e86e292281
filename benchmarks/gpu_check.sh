#!/usr/bin/env bash
# GPU check (issue 12): lensworks at scale on randomly initialised GPT-2-XL, Pythia-1.4B and
# Llama-3-8B shaped models, bf16, one GPU. Installs nothing.
#
# Run from the repository root on the GPU machine:
#     bash benchmarks/gpu_check.sh [extra scale.py flags, e.g. --models gpt2-xl --deadline 300]
#
# Python: .venv/bin/python when it imports torch (with CUDA) and transformer_lens, else python3
# under the same test; neither passing is an error that says what is missing. The repository root
# is put on PYTHONPATH (lensworks need not be installed); a PYTHONPATH already set is kept after
# it (e.g. a folder where transformer_lens and its pure-Python dependencies were unpacked).
# Writes out/gpu_scale.json (and a copy into $OUT when that is set) and prints the table; after a
# timeout or crash, the table of the rows done so far (the JSON is rewritten after every row).
# First the seed-004 job (benchmarks/seed004_job.py: trains the d384 character model on the GPU, about
# 600 steps, then fit + evaluate warm in six forward/precision variants; at most 150 s), then the scale
# benchmark (at most 320 s): under 8 minutes in all.
# For a dry run without a GPU: GPU_CHECK_CPU=1 GPU_CHECK_JSON=/tmp/x.json SEED004_FLAGS=--tiny \
#     SEED004_TIMEOUT=900 bash benchmarks/gpu_check.sh --device cpu --tiny
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
JSON=${GPU_CHECK_JSON:-out/gpu_scale.json}
mkdir -p "$(dirname "$JSON")"

echo "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || echo "(nvidia-smi -L failed)"
else
    echo "(nvidia-smi not found)"
fi

CHECK='import sys, torch, transformer_lens; sys.exit(0 if torch.cuda.is_available() else 3)'
if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
    CHECK='import torch, transformer_lens'
fi
PY=""
for cand in .venv/bin/python python3; do
    if [ "$cand" = python3 ] && ! command -v python3 >/dev/null 2>&1; then
        continue
    fi
    if [ "$cand" != python3 ] && [ ! -x "$cand" ]; then
        continue
    fi
    if "$cand" -c "$CHECK" >/dev/null 2>&1; then
        PY=$cand
        break
    fi
    echo "-- $cand is not usable:"
    "$cand" -c "$CHECK" 2>&1 | tail -n 1 || true
    "$cand" -c 'import torch; print("   torch", torch.__version__, "cuda available:", torch.cuda.is_available())' 2>/dev/null || true
done
if [ -z "$PY" ]; then
    echo "error: no python here imports torch with CUDA and transformer_lens (tried .venv/bin/python, python3)" >&2
    exit 2
fi

echo "== versions ($PY)"
"$PY" - <<'EOF'
import importlib.metadata as md, platform, torch, transformer_lens, lensworks, os
print("python", platform.python_version(), platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for d in ("transformer_lens", "transformers"):
    try:
        print(d, md.version(d))
    except Exception as e:
        print(d, "?", e)
print("lensworks from", os.path.dirname(lensworks.__file__))
EOF

echo "== seed 004 job (trained d384 character model, 1.1 M characters, 20,000 prompts)"
SEED_JSON="$(dirname "$JSON")/seed004.json"
rc_seed=0
timeout "${SEED004_TIMEOUT:-150}" "$PY" benchmarks/seed004_job.py --json "$SEED_JSON" ${SEED004_FLAGS:-} || rc_seed=$?
if [ "$rc_seed" -ne 0 ]; then
    echo "seed004_job.py exited with status $rc_seed$([ "$rc_seed" -eq 124 ] && echo ' (killed by its timeout)')"
fi
if [ -f "$SEED_JSON" ] && [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$SEED_JSON" "$OUT/"
fi

echo "== scale benchmark"
rm -f "$JSON"
rc=0
timeout "${SCALE_TIMEOUT:-320}" "$PY" benchmarks/scale.py --deadline 300 --json "$JSON" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "scale.py exited with status $rc$([ "$rc" -eq 124 ] && echo ' (killed by its timeout)')"
fi

if [ -f "$JSON" ]; then
    if [ "$rc" -ne 0 ]; then  # scale.py did not get to print its table: print what the JSON holds
        echo "== table so far ($JSON)"
        "$PY" benchmarks/scale.py --show "$JSON"
    fi
    if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
        cp "$JSON" "$OUT/"
    fi
else
    echo "(no JSON written)"
fi
exit $(( rc != 0 ? rc : rc_seed ))
