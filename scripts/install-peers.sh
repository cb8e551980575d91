#!/usr/bin/env bash
# Peer libraries (and tools) used as test oracles whose declared dependencies would pull a CUDA build of torch
# (curvlinops -> backpack -> torchvision; PyHessian): install them without dependencies, then their real needs.
set -euo pipefail
python -m pip install --no-deps "curvlinops-for-pytorch" einconv pyhessian "hessian-eigenthings==1.0.0a5"
python -m pip install einops opt-einsum linear_operator
# A headless browser for the study report's browser test (Debian's chromium); the test skips, saying why, without it.
if ! command -v chromium >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "install-peers: chromium not installed; the browser test will skip"
fi
