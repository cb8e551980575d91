"""Ablation on a small hybrid quantum language model: AdamW vs Fubini–Study QNG vs pull-back QNG.

Default: the quantum bigram LM (token embedding → angle embedding into 5 qubits → 2-layer hardware-efficient
circuit → ⟨Z⟩ → linear to the vocabulary) on the Shakespeare characters, 200 steps, 5 seeds per arm; a few
minutes on 2 CPU cores. ``--task gpt`` runs a one-block GPT whose MLP is the quantum layer instead. Same
options as ``infogeom quantum-ablation`` (see ``--help``).

    python examples/quantum_ablation.py [--seeds 5] [--steps 200] [--task bigram|gpt]
"""

import argparse
import sys

from infogeom.cli.quantum import add_arguments, run
from infogeom.errors import InfogeomError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except InfogeomError as exc:
        print(f"quantum_ablation: error: {exc}", file=sys.stderr)
        sys.exit(2)
