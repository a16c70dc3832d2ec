#!/usr/bin/env bash
# One command to set up and run Qwen3 Chat.
#
#   ./start.sh [options]        set up .venv on first run, then start the web UI (7860) and API (8000);
#                               options go to app.py (e.g. --demo, --model PATH, --host 0.0.0.0)
#   ./start.sh chat|doctor|make-model|quantize|batch|bench [args]
#                               the same set-up, then `.venv/bin/python -m chatbot COMMAND args`
#   ./start.sh test [pytest args]
#                               set up with the test tools (and Chromium for the browser tests), lint (when
#                               no pytest arguments are given) and run the tests
#
# Environment: PYTHON (interpreter to build .venv with), TORCH_SPEC (torch requirement to install when
# torch is missing), TORCH_INDEX_URL (extra pip index for torch, e.g. https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
MODE=run
if [[ "${1:-}" == "test" ]]; then
  MODE=test
  shift
fi
case "${1:-}" in
  serve | chat | make-model | quantize | doctor | batch | bench) MODE=command ;;
esac

say() { printf '[start.sh] %s\n' "$*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "Python 3.10+ is needed: install python3 (and python3-venv) first."
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  say "Python 3.10+ is needed; $PYTHON is $("$PYTHON" --version 2>&1)."
  exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  # Reuse a torch that is already installed for this Python (often a CUDA build) instead of downloading one.
  if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
    say "Creating $VENV (reusing the installed torch)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    say "Creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  if [[ -n "${TORCH_SPEC:-}" ]]; then
    spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    spec="torch"  # PyPI's Linux build ships CUDA
  else
    spec="torch==2.13.0"  # no NVIDIA GPU: a pinned CPU-friendly build (an unpinned one pulls gigabytes of CUDA)
  fi
  say "Installing $spec"
  "$PY" -m pip install --quiet ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$spec"
fi

requirements=requirements.txt
[[ "$MODE" == test ]] && requirements=requirements-dev.txt
stamp="$VENV/.installed-$(cat requirements.txt "$requirements" | sha256sum | cut -c1-16)-${MODE/command/run}"
if [[ ! -f "$stamp" ]]; then
  say "Installing $requirements"
  "$PY" -m pip install --quiet -r "$requirements"
  touch "$stamp"
fi

if [[ "$MODE" == run ]]; then
  exec "$PY" app.py "$@"
fi
if [[ "$MODE" == command ]]; then
  exec "$PY" -m chatbot "$@"
fi

# Tests: the browser tests drive Debian's Chromium through Playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1 && [[ -z "${CHROMIUM_PATH:-}" ]]; then
  say "Installing Chromium for the browser tests"
  if [[ "$(id -u)" -eq 0 ]]; then sudo=""; else sudo="sudo"; fi
  # Another apt or dpkg (an unattended upgrade, say) may hold the locks: wait for it instead of failing.
  lock_wait=(-o DPkg::Lock::Timeout=600)
  updated=""
  for _ in $(seq 30); do
    if $sudo apt-get "${lock_wait[@]}" update -qq; then updated=1; break; fi
    say "apt-get update failed (another package manager running?); trying again in 10 s"
    sleep 10
  done
  [[ -n "$updated" ]] && DEBIAN_FRONTEND=noninteractive $sudo apt-get "${lock_wait[@]}" install -y -qq chromium >/dev/null \
    || { say "Could not install chromium: install it (apt-get install chromium) or set CHROMIUM_PATH."; exit 1; }
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ $# -eq 0 ]]; then
  say "Lint (ruff)"
  "$PY" -m ruff check chatbot tests app.py
  "$PY" -m ruff format --check --quiet chatbot tests app.py
fi
exec "$PY" -m pytest "$@"
