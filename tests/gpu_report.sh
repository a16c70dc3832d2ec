#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in under 8 minutes on an H100: one JSON with the GPU tests, decode at
# 1/4/16 streams for FP8 and BF16, time to first token at 512 tokens, kernels and host syncs per token,
# each FP8 layer shape against cuBLAS BF16, and the driver/torch/Triton versions (chatbot/cli/gpu_report.py),
# on a generated Qwen3-0.6B (the real architecture, random weights). Without a CUDA GPU it stops at once.
#
#   tests/gpu_report.sh [OUT]        (default OUT: bench-out/gpu; PY=python to use another interpreter)
#   writes OUT/gpu-report.json, with OUT/nvidia-smi.txt, OUT/doctor.txt and OUT/gpu-tests.txt beside it
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
OUT="${1:-bench-out/gpu}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

"$PY" -c 'from chatbot.cli.gpu_report import exit_without_cuda; exit_without_cuda()'
mkdir -p "$OUT"
model="$OUT/qwen3-0.6b-fp8"
[[ -f "$model/config.json" ]] || "$PY" -m chatbot make-model "$model" --size 0.6b --format fp8 >"$OUT/make-model.txt"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m chatbot doctor --model "$model" --load >"$OUT/doctor.txt" 2>&1 || true
exec timeout 540 "$PY" -m chatbot.cli.gpu_report --model "$model" --out "$OUT/gpu-report.json"
