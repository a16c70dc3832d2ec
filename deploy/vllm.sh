#!/usr/bin/env bash
# vLLM serving Qwen3-0.6B-FP8 for this app's --backend (see deploy/README.md; not run on the machines this
# project is built on: they have no GPU). FP8 runs natively on compute capability >= 8.9 (Ada, Hopper) and as
# FP8 Marlin weight-only on Ampere; --reasoning-parser qwen3 sends the thinking in reasoning_content.
set -euo pipefail
exec vllm serve Qwen/Qwen3-0.6B-FP8 \
  --reasoning-parser qwen3 \
  --host 0.0.0.0 --port 8000 \
  --max-model-len 32768 \
  --gpu-memory-utilization 0.90 \
  ${VLLM_API_KEY:+--api-key "$VLLM_API_KEY"} \
  "$@"
# Then: ./start.sh --backend http://GPU_HOST:8000/v1 --backend-precision fp8
#       (with VLLM_API_KEY set there: add QWEN_BACKEND_API_KEY=... in this app's environment)
