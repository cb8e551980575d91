"""bf16 autocast training (``dtype = "bf16"``): every registered optimizer against its float32 run, float32
master weights and Kronecker factors / eigenbases, bit-exact resume, and float32 curvature of bf16-stored
checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import own_optimizers
from test_optim_training import SETTINGS, markov_batches, small_gpt
from test_train import StopAt, corpus_fixture, one_thread_fixture, tiny_config  # noqa: F401 (fixtures)

from infogeom.cli import main
from infogeom.errors import InfogeomError
from infogeom.models import lm_loss
from infogeom.models.quantum_layer import add_quantum_layers
from infogeom.optim import build_optimizer
from infogeom.train import load_checkpoint, load_config, load_model, train

STEPS = 16


def run(name: str, dtype: torch.dtype | None) -> tuple[list[float], torch.nn.Module, torch.optim.Optimizer]:
    """Losses of ``STEPS`` steps of ``name`` on the Markov task, the forward under bf16 autocast when ``dtype``."""
    model = small_gpt()
    if name == "qng":
        add_quantum_layers(model, blocks=(0,), target="mlp", n_qubits=3, n_layers=1)
    lr, options = SETTINGS[name] if name in SETTINGS else ({"sgd": 0.3, "adamw": 1e-2, "qng": 1e-2}[name], {})
    opt = build_optimizer(name, model, lr, **options)
    losses = []
    for x, y in markov_batches(STEPS):
        opt.zero_grad()
        with torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
            loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model, opt


#: the library's own optimizers (benchmarks imported by other test modules register baselines such as SOAP)
OWN = own_optimizers()


@pytest.mark.parametrize("name", OWN)
def test_every_optimizer_trains_under_bf16_autocast_like_float32(name):
    bf16, model, opt = run(name, torch.bfloat16)
    fp32, _, _ = run(name, None)
    assert all(math.isfinite(v) for v in bf16)
    assert sum(bf16[-4:]) < sum(bf16[:4])  # decreasing
    assert abs(sum(bf16[-4:]) - sum(fp32[-4:])) / 4 <= 0.05 * sum(fp32[-4:]) / 4, (bf16, fp32)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    states = [t for st in opt.state.values() for t in st.values()
              if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert all(t.dtype in (torch.float32, torch.float64) for t in states), {t.dtype for t in states}
    core = getattr(opt, "core", None)
    if core is not None:  # Kronecker factors and eigendecompositions
        kron = [st[k] for st in core.state.values() for k in ("L", "R", "eL", "eR", "QL", "QR")
                if st.get(k) is not None]
        assert kron and all(t.dtype == torch.float32 for t in kron)


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_bf16_run_resumes_bit_exactly_with_float32_factors(corpus, tmp_path, name):
    def config(out):
        return tiny_config(corpus, out, max_steps=6, ckpt_every=0, eval_every=3,
                           **{"train.dtype": "bf16", "optim.name": name, "optim.options.cov_every": 2,
                              "optim.options.inv_every": 2})

    straight = train(config(tmp_path / "a"))
    first = train(config(tmp_path / "b"), callbacks=[StopAt(3)])
    assert first.stop_reason == "interrupted" and first.step == 3
    second = train(config(tmp_path / "b"), resume="latest")
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert a["config"]["dtype"] == "bf16"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(v.dtype == torch.float32 for v in a["model"].values() if v.is_floating_point())
    loss = [r["loss"] for r in straight.history if "loss" in r]
    assert loss == [r["loss"] for r in second.history if "loss" in r] and all(map(math.isfinite, loss))
    factors = [t for st in a["optimizer"]["state"].values() for k, t in st.items() if k in ("L", "R", "QL", "eL")]
    assert factors and all(t.dtype == torch.float32 for t in factors)


def test_dtype_setting_errors():
    with pytest.raises(InfogeomError, match="unknown dtype 'fp8'; choose one of float32, bf16"):
        load_config(None, ["dtype=fp8"])
    assert load_config(None, ["train.dtype=bf16"]).dtype == "bf16"  # train.KEY = the top-level KEY


def test_curvature_of_a_bf16_checkpoint_is_computed_in_float32(tmp_path, capsys):
    pytest.importorskip("transformers")
    from hf_checkpoints import corpus, make_checkpoint
    from transformers import AutoModelForCausalLM

    src = make_checkpoint(tmp_path, "llama")
    bf16 = tmp_path / "llama-bf16"
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(bf16)
    for f in src.glob("tokenizer*"):
        (bf16 / f.name).write_bytes(f.read_bytes())
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    model, _, _ = load_model(f"hf:{bf16}")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    values = {}
    for dtype in ("float32", "float64"):
        out = tmp_path / dtype
        assert main(["curvature", f"hf:{bf16}", "--dtype", dtype, "--what", "eig", "--k", "1", "--batch-size",
                     "2", "--budget", "0", "--tol", "1e-6", "--threads", "1", "--corpus", str(corpus(tmp_path)),
                     "--out", str(out)]) == 0
        assert f", {dtype})" in capsys.readouterr().out
        values[dtype] = json.loads((out / "eig.json").read_text())["eigenvalues"][0]
    assert abs(values["float32"] - values["float64"]) <= 1e-3 * abs(values["float64"]), values
