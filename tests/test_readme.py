"""The README's Python quickstart runs as written (documentation that cannot silently rot)."""

import re
from pathlib import Path


def test_readme_python_quickstart_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    lam, tr = namespace["lam"], namespace["tr"]
    assert lam.converged and float(lam.values[0]) > 0
    assert tr.value > 0 and tr.stderr < tr.value


def test_readme_optimizer_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "EKFAC(" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    opt = namespace["opt"]
    assert opt.core.steps == len(namespace["batches"])
    assert all("exp_avg" in opt.state[layer.weight] for layer in opt.core.layers)
