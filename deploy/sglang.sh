#!/usr/bin/env bash
# SGLang serving Qwen3-0.6B-FP8 for this app's --backend (see deploy/README.md; not run here: no GPU).
# --reasoning-parser qwen3 sends the thinking in reasoning_content; --dp N runs N data-parallel replicas.
set -euo pipefail
exec python -m sglang.launch_server \
  --model-path Qwen/Qwen3-0.6B-FP8 \
  --reasoning-parser qwen3 \
  --host 0.0.0.0 --port 30000 \
  --context-length 32768 \
  ${SGLANG_API_KEY:+--api-key "$SGLANG_API_KEY"} \
  "$@"
# Then: ./start.sh --backend http://GPU_HOST:30000/v1 --backend-precision fp8
