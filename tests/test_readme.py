"""The README's Python examples run as written (documentation that cannot silently rot)."""

import re
from pathlib import Path


def run_block(marker: str) -> dict:
    """Execute the first ```python block of the README that contains ``marker``; return its namespace."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_readme_python_quickstart_runs():
    namespace = run_block("")
    lam, tr = namespace["lam"], namespace["tr"]
    assert lam.converged and float(lam.values[0]) > 0
    assert tr.value > 0 and tr.stderr < tr.value


def test_readme_optimizer_example_runs():
    namespace = run_block("EKFAC(")
    opt = namespace["opt"]
    assert opt.core.steps == len(namespace["batches"])
    assert all("exp_avg" in opt.state[layer.weight] for layer in opt.core.layers)
