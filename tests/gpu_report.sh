#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in minutes: doctor, the GPU tests, then the benchmark on a generated
# Qwen3-0.6B (the real architecture, random weights), every output kept in one folder for the README.
#
#   tests/gpu_report.sh [OUT]        (default OUT: bench-out/gpu; PY=python to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
OUT="${1:-bench-out/gpu}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

model="$OUT/qwen3-0.6b-fp8"
[[ -f "$model/config.json" ]] || "$PY" -m chatbot make-model "$model" --size 0.6b --format fp8 >"$OUT/make-model.txt"
{ nvidia-smi || true; "$PY" -m chatbot doctor --model "$model" --load || true; } 2>&1 | tee "$OUT/doctor.txt"
"$PY" -m pytest -m gpu tests/engine/test_gpu.py -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu-tests.txt" || true
"$PY" -m chatbot bench --model "$model" --device cuda --precisions fp8,bf16,fp16 --out "$OUT" 2>&1 | tee "$OUT/bench.txt"
