#!/usr/bin/env bash
# Peer libraries used as test oracles whose declared dependencies would pull a CUDA build of torch
# (curvlinops -> backpack -> torchvision; PyHessian): install them without dependencies, then their real needs.
set -euo pipefail
python -m pip install --no-deps "curvlinops-for-pytorch" einconv pyhessian
python -m pip install einops opt-einsum linear_operator
