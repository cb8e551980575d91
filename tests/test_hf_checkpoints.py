"""Pretrained transformers checkpoints (``model.arch = "hf"``, ``hf:PATH``) of three families — GPT-2 (Conv1D,
tied head), GPT-NeoX (parallel residual, rotary), Llama (RoPE, RMSNorm, GQA, SwiGLU, untied head) — built tiny
and random by :mod:`hf_checkpoints`. Oracles: uninterrupted training (bit-exact resume), central differences of
the gradient (Hessian-vector products through eager attention), transformers' own ``from_pretrained`` (export)
and infogeom's GPT with the same weights as nn.Linear (Conv1D K-FAC factors and steps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import random_batch
from hf_checkpoints import FAMILIES, corpus, make_checkpoint
from test_train import StopAt
from torch.func import functional_call

from infogeom.cli import main
from infogeom.geometry import HessianOperator
from infogeom.geometry.kfac import ekfac_factors, kfac_factors
from infogeom.models import GPT, GPTConfig, lm_loss
from infogeom.optim import build_optimizer
from infogeom.train import Trainer, load_checkpoint, load_config, load_model, train

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _no_loss_figure(monkeypatch, tmp_path):
    """The end-of-run loss figure (tested with the trainer) is most of a 2-step run's time: skipped here. Token
    caches of the commands go to the test's folder."""
    monkeypatch.setattr(Trainer, "_plot_losses", lambda self: None)
    monkeypatch.setenv("INFOGEOM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hf")
    for family in FAMILIES:
        make_checkpoint(base, family)
    return base


def run_config(root: Path, family: str, out: Path, optimizer: str = "adamw", **extra):
    overrides = {"model.arch": "hf", "model.path": str(root / family), "data.tokenizer": "hf",
                 "data.corpus": str(corpus(root)), "data.cache_dir": str(root / "cache"), "data.block_size": 16,
                 "data.batch_size": 4, "max_steps": 4, "eval_every": 0, "eval_batches": 1, "log_every": 1,
                 "ckpt_every": 0, "optim.name": optimizer, "optim.warmup_steps": 0, "optim.lr": 1e-3,
                 "progress": False, "tensorboard": False, "out_dir": str(out), **extra}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])




@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_with_every_optimizer_and_resumes_bit_exactly(root, tmp_path, family):
    for name in ("adamw", "kfac", "ekfac"):
        result = train(run_config(root, family, tmp_path / name, name, max_steps=2))
        assert result.step == 2 and all(r["loss"] == r["loss"] for r in result.history if "loss" in r)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["hf_config"]["vocab_size"] == 256 and ckpt["tokenizer"]["spec"] == f"hf:{root / family}"
    assert ckpt["config"]["model"]["n_embd"] == 32 and ckpt["config"]["model"]["block_size"] == 64  # filled in

    # K-FAC with momentum and factor averages; GPT-2 has dropout 0.1 (its config's default): RNG restored too
    straight = train(run_config(root, family, tmp_path / "a", "kfac"))
    first = train(run_config(root, family, tmp_path / "b", "kfac"), callbacks=[StopAt(2)])
    assert first.stop_reason == "interrupted" and first.step == 2
    second = train(run_config(root, family, tmp_path / "b", "kfac"), resume="latest")
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert second.step == 4 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["loss"] for r in straight.history if "loss" in r] == [r["loss"] for r in second.history
                                                                    if "loss" in r]


def test_kfac_coverage_includes_conv1d_and_fused_qkv(root, tmp_path):
    expected = {"gpt2": (8, "head tied to the embedding"), "neox": (9, "LayerNorm"), "llama": (15, "LlamaRMSNorm")}
    for family, (layers, fallback) in expected.items():
        trainer = Trainer(run_config(root, family, tmp_path / family, "kfac"))
        try:
            line = trainer.optimizer.coverage
            names = {la.info.name for la in trainer.optimizer.core.layers}
        finally:
            trainer.close()
        assert line.startswith(f"kfac coverage: {layers} layers,") and fallback in line, line
        fused = {"gpt2": "attn.c_attn", "neox": "attention.query_key_value", "llama": "self_attn.q_proj"}[family]
        assert any(n.endswith(fused) for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_hessian_vector_product_matches_central_differences(root, family, monkeypatch):
    from transformers.models.llama import modeling_llama

    # LlamaRMSNorm always normalizes in float32 (even in a float64 model): that round-off would swamp the central
    # difference, so the float64 oracle uses the same formula in float64
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", lambda self, x: self.weight * x * torch.rsqrt(
        x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    model, _, _ = load_model(f"hf:{root / family}")
    model = model.double()
    batch = random_batch(vocab=256, B=2, T=8, seed=5)
    op = HessianOperator(model, batch)  # double backward through eager attention
    params = {n: p.detach() for n, p in model.named_parameters()}
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vs = dict(zip(params, torch.split(v, [p.numel() for p in params.values()])))

    def grad_at(eps):
        shifted = {n: (p + eps * vs[n].view_as(p)).requires_grad_(True) for n, p in params.items()}
        loss = lm_loss(functional_call(model, shifted, (batch[0],)), batch[1])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(shifted.values()))])

    fd = (grad_at(1e-6) - grad_at(-1e-6)) / 2e-6  # error O(eps²), round-off ~1e-10
    assert torch.linalg.vector_norm(op.matvec(v) - fd) <= 1e-6 * torch.linalg.vector_norm(fd)


def test_curvature_eval_sample_and_export_from_the_command_line(root, tmp_path, capsys):
    result = train(run_config(root, "llama", tmp_path / "run", "ekfac", max_steps=2))
    ckpt = str(result.checkpoint)
    common = ["--what", "eig,trace", "--batch-size", "2", "--budget", "0", "--probes", "4", "--hutchpp-probes",
              "6", "--k", "1", "--threads", "1"]
    for source, out in ((ckpt, tmp_path / "c1"), (f"hf:{root / 'gpt2'}", tmp_path / "c2")):
        assert main(["curvature", source, *common, "--corpus", str(corpus(root)), "--out", str(out)]) == 0
        eig = json.loads((out / "eig.json").read_text())
        assert (out / "trace.json").is_file() and json.loads((out / "summary.json").read_text())["items"]
        assert eig["converged"] and eig["eigenvalues"][0] > 0, eig
    assert main(["eval", f"hf:{root / 'neox'}", "--corpus", str(corpus(root)), "--batches", "1",
                 "--batch-size", "2"]) == 0
    assert main(["sample", ckpt, "--tokens", "5", "--prompt", "The"]) == 0
    capsys.readouterr()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert main(["export", ckpt, str(tmp_path / "exported")]) == 0
    model, tokenizer, _ = load_model(ckpt)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", local_files_only=True)
    x = torch.tensor([tokenizer.encode("Curvature of a model")])
    assert torch.equal(back(input_ids=x).logits, model(x))
    assert AutoTokenizer.from_pretrained(tmp_path / "exported")("the text", add_special_tokens=False)[
        "input_ids"] == tokenizer.encode("the text")
    assert main(["export", ckpt, str(tmp_path / "exported")]) == 2  # exists: refused, untouched
    assert "not an empty folder" in capsys.readouterr().err


def _gpt_and_gpt2(root: Path):
    """infogeom's GPT (nn.Linear) and transformers' GPT-2 (Conv1D) with the same weights, float64, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from infogeom.models.hf import HFCausalLM
    shape = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    gpt = GPT(GPTConfig(**shape, attention="math")).double()
    cfg = GPT2Config(vocab_size=11, n_positions=8, n_layer=2, n_head=2, n_embd=8, activation_function="gelu",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                     attn_implementation="eager")
    hf = HFCausalLM(GPT2LMHeadModel(cfg)).double()
    src = gpt.state_dict()
    with torch.no_grad():
        for name, p in hf.model.transformer.named_parameters():
            conv1d = p.dim() == 2 and not name.startswith(("wte", "wpe"))
            p.copy_(src[name.replace("h.", "blocks.", 1)].T if conv1d else src[name.replace("h.", "blocks.", 1)])
    return gpt, hf


def test_conv1d_factors_and_steps_equal_the_nn_linear_model(root):
    gpt, hf = _gpt_and_gpt2(root)
    batch = random_batch(vocab=11, B=3, T=8, seed=2)
    for factors in (kfac_factors, ekfac_factors):
        ours = factors(gpt, batch, fisher="mc", generator=torch.Generator().manual_seed(0))
        theirs = factors(hf, batch, fisher="mc", generator=torch.Generator().manual_seed(0))
        conv = {n: f for n, f in theirs.items() if f.info.kind == "conv1d"}
        assert len(conv) == 8
        for name, f in conv.items():
            ref = ours[name.replace("model.transformer.h.", "blocks.")]
            torch.testing.assert_close(f.A, ref.A, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(f.G, ref.G, rtol=1e-10, atol=1e-12)
            if f.moments is not None:  # EK-FAC moments in the transposed layout [d_in + 1, d_out]
                torch.testing.assert_close(f.moments, ref.moments.T, rtol=1e-8, atol=1e-12)
    # the optimizers' updates agree through the transposed gradient matrices. K-FAC's is basis-free (1e-12);
    # EK-FAC's elementwise Adam in the eigenbasis amplifies the 1e-16 factor differences where eigenvalues nearly
    # coincide (measured 3e-8), so its check is looser; "expand" on 64 tokens keeps the factors full rank
    batch = random_batch(vocab=11, B=8, T=8, seed=2)
    for name, atol in (("kfac", 1e-12), ("ekfac", 1e-6)):
        gpt, hf = _gpt_and_gpt2(root)
        opts = [build_optimizer(name, m, 1e-2, 0.0, cov_every=1, inv_every=1, fisher="empirical", approx="expand")
                for m in (gpt, hf)]
        for _ in range(2):
            for m, opt in zip((gpt, hf), opts):
                opt.zero_grad()
                lm_loss(m(batch[0]), batch[1]).backward()
                opt.step()
        src = gpt.state_dict()
        for n, p in hf.model.transformer.named_parameters():
            ref = src[n.replace("h.", "blocks.", 1)]
            torch.testing.assert_close(p, ref.T if p.dim() == 2 and not n.startswith(("wte", "wpe")) else ref,
                                       rtol=1e-9, atol=atol)


def _bad_folder(root: Path, tmp: Path, case: str) -> str:
    path = tmp / case
    if case == "empty":
        path.mkdir()
    elif case == "no-weights":
        path.mkdir()
        shutil.copy(root / "gpt2" / "config.json", path)
    elif case in ("unknown-arch", "too-large", "vocab"):
        shutil.copytree(root / "gpt2", path)
        cfg = json.loads((path / "config.json").read_text())
        cfg.update({"unknown-arch": {"model_type": "no-such-architecture"},
                    "too-large": {"n_embd": 16384, "n_layer": 48, "n_head": 16},
                    "vocab": {"vocab_size": 100}}[case])
        (path / "config.json").write_text(json.dumps(cfg))
    else:
        return {"hub": "hf:no-such-org/no-such-model", "missing": f"hf:{tmp / 'nowhere'}"}[case]
    return f"hf:{path}"


@pytest.mark.parametrize("case, message", [
    ("empty", "is not a transformers checkpoint (no config.json"),
    ("no-weights", "config.json but no weights"),
    ("unknown-arch", "architecture unknown to transformers"),
    ("too-large", "GiB but only"),
    ("vocab", "does not match the model"),
    ("hub", "infogeom never downloads"),
    ("missing", "no such folder"),
])
def test_bad_checkpoints_are_one_line_errors_and_write_nothing(root, tmp_path, capsys, case, message):
    spec = _bad_folder(root, tmp_path, case)
    out = tmp_path / "out"
    rc = main(["train", "--model", spec, "--corpus", str(corpus(root)), "--block-size", "16", "--max-steps", "1",
               "--set", f"data.cache_dir={root / 'cache'}", "--set", "optim.warmup_steps=0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("infogeom: error:") and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_hf_arch_config_errors(root):
    from infogeom.errors import InfogeomError
    with pytest.raises(InfogeomError, match="needs model.path"):
        load_config(None, ["model.arch=hf"])
    with pytest.raises(InfogeomError, match="set data.tokenizer='hf'"):
        load_config(None, ["model.arch=hf", f"model.path={root / 'gpt2'}"])
    with pytest.raises(InfogeomError, match="only used with model.arch='hf'"):
        load_config(None, ["model.path=somewhere"])
    cfg = load_config(None, ["model.arch=hf", f"model.path={root / 'gpt2'}", "data.tokenizer=hf"])
    assert cfg.data.tokenizer == f"hf:{root / 'gpt2'}"


def test_tokenizer_encodes_like_autotokenizer_and_round_trips(root):
    from transformers import AutoTokenizer

    from infogeom.data import build_tokenizer, tokenizer_from_dict
    text = corpus(root).read_text(encoding="utf-8")
    ours = build_tokenizer(f"hf:{root / 'gpt2'}", "")
    theirs = AutoTokenizer.from_pretrained(root / "gpt2", local_files_only=True)
    assert ours._parallel and ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    again = tokenizer_from_dict(ours.to_dict())  # what a checkpoint stores: no folder needed
    assert again.encode(text) == ours.encode(text) and again.decode(ours.encode(text)) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_product_free_hessian_forms_on_every_family(root, family):
    """Second differences of float64 loss values (Llama's float32-rounding RMSNorm evaluated in float64 there)
    agree with the exact vᵀHv of a float32 checkpoint, so "auto" takes them on every family; the model's own
    RMSNorm is back afterwards."""
    model, _, _ = load_model(f"hf:{root / family}")
    batch = random_batch(vocab=256, B=2, T=8, seed=6)
    V = torch.randint(0, 2, (sum(p.numel() for p in model.parameters()), 3),
                      generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    exact = HessianOperator(model, batch, forms="backward").quadratic_forms(V)
    op = HessianOperator(model, batch)
    got = op.quadratic_forms(V)
    assert op.forms == "difference", (family, op.form_error)
    torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))
    assert not any("forward" in vars(m) for m in model.modules())
