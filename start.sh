#!/usr/bin/env bash
# One command to set up and run Qwen3 Chat.
#
#   ./start.sh [options]        set up .venv on first run, then start the web UI (7860) and API (8000);
#                               options go to app.py (e.g. --demo, --model PATH, --host 0.0.0.0)
#   ./start.sh chat|doctor|make-model|quantize|batch|bench [args]
#                               the same set-up, then `.venv/bin/python -m chatbot COMMAND args`
#   ./start.sh test [pytest args]
#                               set up with the test tools (and Chromium for the browser tests, cmake and g++
#                               for llama.cpp), lint and build llama.cpp (when no pytest arguments are given)
#                               and run the tests: the whole suite, what CI runs
#   ./start.sh test --fast [pytest args]
#                               the fast lane: every tier but browser and peers (no Chromium, no llama.cpp
#                               build, no litellm environment), after lint when no pytest arguments are given
#
# Environment: PYTHON (interpreter to build .venv with), TORCH_SPEC (torch requirement to install when
# torch is missing), TORCH_INDEX_URL (the one pip index torch comes from, e.g. https://download.pytorch.org/whl/cu126;
# its dependencies come from PyPI, with torch held to that build by .venv/torch-constraint.txt).
set -euo pipefail

say() { printf '[start.sh] %s\n' "$*" >&2; }

# Which torch to install when none is there: prints "SPEC INDEX_URL" (INDEX_URL may be empty: PyPI).
# PyPI's Linux torch is a CUDA 13 build since 2.11, which needs a driver for CUDA >= 13.0 (580+); with
# an older driver it installs fine and then sees no GPU. So the build follows what the driver supports
# (`nvidia-smi` prints it as "CUDA Version: X.Y"), pinned to a version its index has: PyTorch dropped
# CUDA 12.8 builds after 2.11, so the cu128 index's newest torch is older than PyPI's.
TORCH_VERSION=2.13.0       # the torch the app is tested with (PyPI, the cu126 index and CPU machines)
TORCH_CU128_VERSION=2.11.0 # the last release with CUDA 12.8 builds
PYTORCH_WHEELS=https://download.pytorch.org/whl
torch_choice() {
  if [[ -n "${TORCH_SPEC:-}" || -n "${TORCH_INDEX_URL:-}" ]]; then
    echo "${TORCH_SPEC:-torch} ${TORCH_INDEX_URL:-}"
    return
  fi
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "torch==$TORCH_VERSION "  # no NVIDIA GPU: pinned (an unpinned one may pull a torch the app was not tested with)
    return
  fi
  local cuda major minor
  cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
  if [[ -z "$cuda" ]]; then
    say "nvidia-smi did not say which CUDA version the driver supports; installing PyPI's torch (CUDA 13)"
    echo "torch==$TORCH_VERSION "
    return
  fi
  major=${cuda%%.*}
  minor=${cuda#*.}
  if ((major >= 13)); then
    echo "torch==$TORCH_VERSION "
  elif ((major == 12 && minor >= 8)); then
    echo "torch==$TORCH_CU128_VERSION+cu128 $PYTORCH_WHEELS/cu128"
  elif ((major == 12 && minor >= 6)); then
    echo "torch==$TORCH_VERSION+cu126 $PYTORCH_WHEELS/cu126"
  else
    say "The NVIDIA driver supports CUDA $cuda only; current torch builds need 12.6 or newer."
    say "Update the driver, or set TORCH_SPEC and TORCH_INDEX_URL to a torch build for CUDA $cuda."
    echo "torch==$TORCH_VERSION+cu126 $PYTORCH_WHEELS/cu126"
  fi
}

# install_torch PY CONSTRAINT_FILE: installs torch_choice's torch into PY's environment and writes
# CONSTRAINT_FILE, which holds torch to that build for every later `pip install` (-c).
# torch comes from ONE index: with PyPI as an extra index, pip takes the highest version of all, and
# PyPI's CUDA 13 wheel wins over the cu128 build. So torch alone from its index (--no-deps), then its
# dependencies (nvidia-*, sympy, ...) from PyPI, with the constraint leaving pip no other torch to pick.
install_torch() {
  local py=$1 constraint=$2 spec index
  read -r spec index <<<"$(torch_choice)"
  echo "$spec" >"$constraint"
  say "Installing $spec${index:+ from $index}"
  if [[ -n "$index" ]]; then
    "$py" -m pip install --quiet --no-deps --index-url "$index" "$spec"
  fi
  "$py" -m pip install --quiet -c "$constraint" "$spec"
}

# Sourced (by the tests) for the functions above only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
MODE=run
FAST=""
if [[ "${1:-}" == "test" ]]; then
  MODE=test
  shift
  if [[ "${1:-}" == "--fast" ]]; then
    FAST=1
    shift
  fi
fi
case "${1:-}" in
  serve | chat | make-model | quantize | doctor | batch | bench) MODE=command ;;
esac

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

TORCH_CONSTRAINT="$VENV/torch-constraint.txt"
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  install_torch "$PY" "$TORCH_CONSTRAINT"
fi

requirements=requirements.txt
[[ "$MODE" == test ]] && requirements=requirements-dev.txt
stamp="$VENV/.installed-$(cat requirements.txt "$requirements" | sha256sum | cut -c1-16)-${MODE/command/run}"
if [[ ! -f "$stamp" ]]; then
  say "Installing $requirements"
  # The torch installed above stays: a requirement that wanted another one fails here instead of replacing it.
  constraint=()
  [[ -f "$TORCH_CONSTRAINT" ]] && constraint=(-c "$TORCH_CONSTRAINT")
  "$PY" -m pip install --quiet ${constraint[@]+"${constraint[@]}"} -r "$requirements"
  touch "$stamp"
fi

if [[ "$MODE" == run ]]; then
  exec "$PY" app.py "$@"
fi
if [[ "$MODE" == command ]]; then
  exec "$PY" -m chatbot "$@"
fi

# Tests: the browser tests drive Debian's Chromium through Playwright (no browser download); the peer tests
# build llama.cpp from source (cmake, g++). The fast lane (--fast) runs neither tier and needs neither.
apt_install() {
  if [[ "$(id -u)" -eq 0 ]]; then sudo=""; else sudo="sudo"; fi
  # Another apt or dpkg (an unattended upgrade, say) may hold the locks: wait for it instead of failing.
  lock_wait=(-o DPkg::Lock::Timeout=600)
  updated=""
  for _ in $(seq 30); do
    if $sudo apt-get "${lock_wait[@]}" update -qq; then updated=1; break; fi
    say "apt-get update failed (another package manager running?); trying again in 10 s"
    sleep 10
  done
  [[ -n "$updated" ]] && DEBIAN_FRONTEND=noninteractive $sudo apt-get "${lock_wait[@]}" install -y -qq "$@" >/dev/null
}
if [[ -z "$FAST" ]] && ! command -v chromium >/dev/null 2>&1 && [[ -z "${CHROMIUM_PATH:-}" ]]; then
  say "Installing Chromium for the browser tests"
  apt_install chromium || { say "Could not install chromium: install it (apt-get install chromium) or set CHROMIUM_PATH."; exit 1; }
fi
if [[ -z "$FAST" ]] && { ! command -v cmake >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; }; then
  say "Installing cmake and g++ to build llama.cpp for the tests"
  apt_install cmake g++ || { say "Could not install cmake and g++: install them (apt-get install cmake g++)."; exit 1; }
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ $# -eq 0 ]]; then
  say "Lint (ruff) and types (mypy)"
  "$PY" -m ruff check chatbot tests app.py
  "$PY" -m ruff format --check --quiet chatbot tests app.py
  "$PY" -m mypy  # over chatbot/, configured in pyproject.toml
  if [[ -z "$FAST" ]]; then
    # Built once and cached (~/.cache/qwen3-chat/llama.cpp-*): about 10-15 minutes the first time on 2 cores.
    "$PY" -m chatbot.cli.llamacpp build
  fi
fi
if [[ -n "$FAST" ]]; then
  say "Fast lane: the unit, engine and app tiers (not browser, not peers)"
  exec "$PY" -m pytest -m "not browser and not peers" "$@"
fi
exec "$PY" -m pytest "$@"
