"""Parameter subsets (``--params`` / ``optim.params`` / a pattern as ``names=``) and PEFT LoRA adapters
(``model.lora_r``). Oracles: the dense float64 Hessian and GGN of all parameters by ``jacrev`` (their sub-blocks),
the untouched initial weights (frozen parameters), uninterrupted training (bit-exact resume) and the adapters'
merged weights (export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import own_optimizers, random_batch
from hf_checkpoints import corpus, make_checkpoint
from test_train import StopAt, corpus_fixture, one_thread_fixture, tiny_config  # noqa: F401 (fixtures)
from torch.func import functional_call, grad, jacrev

from infogeom.cli import main
from infogeom.curvature import build_operator
from infogeom.errors import InfogeomError
from infogeom.geometry import freeze_except, match_parameters
from infogeom.models import GPT, GPTConfig, lm_loss
from infogeom.train import Trainer, load_checkpoint, load_model, train
from infogeom.train.modeling import prepare_run_data

VOCAB = 7
SUBSET = "blocks.0.attn.*,ln_f.bias"


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=4, n_layer=1, n_head=2, n_embd=8, attention="math")).double()


def dense_oracles(model: GPT, batch) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(names, H, G): the Hessian ``jacrev(grad(loss))`` and the GGN Jᵀ (diag p − ppᵀ) J / N of the mean token
    loss over every parameter, dense float64 in ``named_parameters`` order."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    theta = torch.cat([p.reshape(-1) for p in params.values()])

    def unflat(t):
        return dict(zip(names, [c.view(s) for c, s in zip(t.split([s.numel() for s in shapes]), shapes)]))

    def logits(t):
        return functional_call(model, unflat(t), (batch[0],)).reshape(-1, VOCAB)

    H = jacrev(grad(lambda t: lm_loss(functional_call(model, unflat(t), (batch[0],)), batch[1])))(theta)
    J = jacrev(logits)(theta)  # [N, V, P]
    p = logits(theta).softmax(-1)
    out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    G = torch.einsum("nvp,nvw,nwq->pq", J, out, J) / J.shape[0]
    return names, H, G


def sub_block(names: list[str], model: GPT, M: torch.Tensor, keep: list[str]) -> torch.Tensor:
    sizes = dict(model.named_parameters())
    idx, offset = [], 0
    for n in names:
        k = sizes[n].numel()
        if n in keep:
            idx += range(offset, offset + k)
        offset += k
    idx = torch.tensor(idx)
    return M[idx][:, idx]


def test_patterns_match_globs_on_dotted_suffixes_and_regexes():
    model = tiny_gpt()
    assert match_parameters(model, "attn.c_attn.*") == ["blocks.0.attn.c_attn.weight", "blocks.0.attn.c_attn.bias"]
    assert match_parameters(model, "wte.weight, wpe.*") == ["wte.weight", "wpe.weight"]
    assert match_parameters(model, r"re:^blocks\.0\.mlp\..*\.bias$") == ["blocks.0.mlp.c_fc.bias",
                                                                         "blocks.0.mlp.c_proj.bias"]
    assert match_parameters(model, "weight") == [n for n, _ in model.named_parameters() if n.endswith(".weight")]
    for bad, message in (("h.9.*", "matches none of the 16 trainable parameters"),
                         ("re:(", "not a valid regular expression"), (" , ", "empty parameter pattern")):
        with pytest.raises(InfogeomError, match=message):
            match_parameters(model, bad)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher"])
def test_restricted_operator_is_the_sub_block_of_the_dense_float64_operator(kind):
    model, batch = tiny_gpt(), random_batch(vocab=VOCAB, B=2, T=4, seed=3)
    names, H, G = dense_oracles(model, batch)
    keep = match_parameters(model, SUBSET)
    oracle = sub_block(names, model, H if kind == "hessian" else G, keep)
    by_names = build_operator(kind, model, batch, names=SUBSET)  # a pattern as names=
    freeze_except(model, SUBSET)  # what --params does: every item sees only the subset
    frozen = build_operator(kind, model, batch)
    for op in (by_names, frozen):
        assert op.names == keep and op.dim == oracle.shape[0] < H.shape[0]
        dense = op.matmat(torch.eye(op.dim, dtype=torch.float64))
        torch.testing.assert_close(dense, oracle, rtol=1e-9, atol=1e-12)


@pytest.fixture(name="gpt_run")
def gpt_run_fixture(corpus, tmp_path):
    return train(tiny_config(corpus, tmp_path / "run", max_steps=2, ckpt_every=0, eval_every=0))


def test_curvature_cli_with_params_matches_the_oracle_and_runs_every_item(gpt_run, tmp_path, capsys):
    ckpt = str(gpt_run.checkpoint)
    pattern = "blocks.0.mlp.c_proj.*"
    out = tmp_path / "curv"
    assert main(["curvature", ckpt, "--params", pattern, "--dtype", "float64", "--what", "eig", "--k", "1",
                 "--batch-size", "2", "--budget", "0", "--tol", "1e-8", "--threads", "1", "--out", str(out)]) == 0
    assert f"matching {pattern!r}" in capsys.readouterr().out
    model, _, cfg = load_model(ckpt)
    model = model.double()
    batch = prepare_run_data(cfg.data).get_batch("train", 2, cfg.data.block_size, torch.Generator().manual_seed(0))
    keep = freeze_except(model, pattern)
    params = {n: p.detach() for n, p in model.named_parameters() if n in keep}
    theta = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(t):
        chunks = t.split([p.numel() for p in params.values()])
        return lm_loss(functional_call(model, {n: c.view_as(p) for (n, p), c in zip(params.items(), chunks)},
                                       (batch[0],), strict=False), batch[1])

    top = float(torch.linalg.eigvalsh(jacrev(grad(loss))(theta)).abs().max())
    eig = json.loads((out / "eig.json").read_text())
    assert abs(abs(eig["eigenvalues"][0]) - top) <= 1e-6 * top

    every = "trace,density,blocks,sharpness,noise,landscape"
    out2 = tmp_path / "curv-all"
    assert main(["curvature", ckpt, "--params", "blocks.0.attn.*", "--what", every, "--batch-size", "2",
                 "--budget", "0", "--probes", "4", "--hutchpp-probes", "6", "--lanczos-steps", "8",
                 "--density-probes", "1", "--block-steps", "4", "--grid", "3", "--threads", "1",
                 "--out", str(out2)]) == 0
    blocks = json.loads((out2 / "blocks.json").read_text())
    assert blocks["names"] and all("attn" in n for n in blocks["names"]), blocks["names"]
    assert {p.name for p in out2.glob("*.json")} >= {f"{i}.json" for i in every.split(",")}


def test_params_matching_nothing_is_one_line_and_writes_nothing(gpt_run, corpus, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["curvature", str(gpt_run.checkpoint), "--params", "transformer.h.3.*", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("infogeom: error: --params 'transformer.h.3.*' matches none") and "\n" not in err
    assert main(["train", "--corpus", str(corpus), "--params", "transformer.h.3.*", "--out", str(out),
                 "--max-steps", "1", "--set", "optim.warmup_steps=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("infogeom: error: optim.params 'transformer.h.3.*' matches none") and "\n" not in err
    assert not out.exists()
    before = sorted(p.name for p in gpt_run.out_dir.rglob("*"))
    assert main(["train", "--resume", str(gpt_run.checkpoint), "--params", "wte.*", "--max-steps", "3"]) == 2
    assert "trained the parameters optim.params=''" in capsys.readouterr().err
    assert sorted(p.name for p in gpt_run.out_dir.rglob("*")) == before


def test_curvature_defaults_to_the_subset_the_run_trained(corpus, tmp_path, capsys):
    run = train(tiny_config(corpus, tmp_path / "run", max_steps=2, ckpt_every=0, eval_every=0,
                            **{"optim.params": "blocks.0.mlp.*", "optim.name": "kfac"}))
    common = ["--what", "eig,sharpness", "--k", "1", "--batch-size", "2", "--budget", "0", "--threads", "1"]
    for extra, subset in (([], "blocks.0.mlp.*"), (["--params", "*"], "*")):
        out = tmp_path / f"curv{len(extra)}"
        assert main(["curvature", str(run.checkpoint), *common, *extra, "--out", str(out)]) == 0
        model = load_model(run.checkpoint)[0]
        n = sum(p.numel() for p in model.parameters()) if subset == "*" else sum(
            p.numel() for name, p in model.named_parameters() if ".mlp." in name)
        assert f"{n:,} parameters matching {subset!r}" in capsys.readouterr().out
    assert "optimizer" in json.loads((tmp_path / "curv0" / "sharpness.json").read_text())  # the run's kfac state


def test_qng_refuses_a_subset_of_its_quantum_weights():
    from infogeom.models.quantum_layer import add_quantum_layers
    from infogeom.optim import build_optimizer

    model = tiny_gpt().float()
    add_quantum_layers(model, blocks=(0,), target="mlp", n_qubits=2, n_layers=1)
    freeze_except(model, "wte.*")
    with pytest.raises(InfogeomError, match="qng preconditions every quantum layer's weights together"):
        build_optimizer("qng", model, 1e-2)


@pytest.mark.parametrize("name", sorted(set(own_optimizers()) - {"qng"}))  # qng: quantum layers (refuses subsets)
def test_frozen_parameters_do_not_move_and_only_the_subset_is_preconditioned(corpus, tmp_path, name):
    pattern = "blocks.0.mlp.*,ln_f.*"
    trainer = Trainer(tiny_config(corpus, tmp_path / name, max_steps=3, ckpt_every=0, eval_every=0,
                                  **{"optim.name": name, "optim.params": pattern}))
    try:
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        size = sum(p.numel() for n, p in trainer.model.named_parameters() if n in trainable)
        coverage = getattr(trainer.optimizer, "coverage", None)
        trainer.fit()
        after = dict(trainer.model.named_parameters())
    finally:
        trainer.close()
    assert trainable == set(match_parameters(tiny_gpt(), pattern))
    assert all(torch.equal(before[n], after[n]) == (n not in trainable) for n in before)  # moved iff trainable
    if name in ("kfac", "ekfac"):  # the two mlp linear maps; the ln_f vectors go to AdamW
        assert coverage.startswith(f"{name} coverage: 2 layers, ") and f"of {size:,} parameters" in coverage
        assert "LayerNorm: not a linear map: 1 (ln_f)" in coverage, coverage


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory) -> Path:
    pytest.importorskip("peft")
    base = tmp_path_factory.mktemp("hf-lora")
    make_checkpoint(base, "gpt2")
    return base


def lora_config(root: Path, out: Path, **extra):
    from test_hf_checkpoints import run_config

    return run_config(root, "gpt2", out, "kfac", **{"model.lora_r": 2, "model.lora_alpha": 4, **extra})


def test_lora_trains_only_the_adapters_resumes_bit_exactly_and_exports_merged(hf_root, tmp_path, capsys):
    straight = train(lora_config(hf_root, tmp_path / "a"))
    first = train(lora_config(hf_root, tmp_path / "b"), callbacks=[StopAt(2)])
    assert first.stop_reason == "interrupted"
    second = train(lora_config(hf_root, tmp_path / "b"), resume="latest")
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["loss"] for r in straight.history if "loss" in r] == [r["loss"] for r in second.history if "loss" in r]

    pretrained, _, _ = load_model(f"hf:{hf_root / 'gpt2'}")
    base = pretrained.model.state_dict()
    adapters = [k for k in a["model"] if ".lora_" in k]
    assert adapters and all(k.endswith(("lora_A.default.weight", "lora_B.default.weight")) for k in adapters)
    for key, value in a["model"].items():  # base weights untouched; B (zero at start) moved
        if ".lora_" not in key:
            name = key.removeprefix("model.base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(value, base[name]), key
    assert any(k.endswith("lora_B.default.weight") and a["model"][k].abs().max() > 0 for k in adapters)

    trainer = Trainer(lora_config(hf_root, tmp_path / "c"))
    try:
        line = trainer.optimizer.coverage
        n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    finally:
        trainer.close()
    assert line.startswith("kfac coverage: 4 layers, ") and f"{n:,} of {n:,} parameters" in line, line

    from transformers import AutoModelForCausalLM
    assert main(["export", str(straight.checkpoint), str(tmp_path / "merged")]) == 0
    model, tokenizer, _ = load_model(straight.checkpoint)
    x = torch.tensor([tokenizer.encode("Curvature of adapters")])
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    assert not any("lora" in k for k in back.state_dict())
    torch.testing.assert_close(back(input_ids=x).logits, model(x), rtol=1e-5, atol=1e-5)

    out = tmp_path / "curv"
    assert main(["curvature", str(straight.checkpoint), "--what", "eig", "--k", "1", "--batch-size", "2",
                 "--budget", "0", "--threads", "1", "--corpus", str(corpus(hf_root)), "--out", str(out)]) == 0
    assert f"{n:,} parameters" in capsys.readouterr().out  # the adapters only
    assert json.loads((out / "eig.json").read_text())["converged"]


def test_lora_config_errors(hf_root, tmp_path):
    with pytest.raises(InfogeomError, match="model.lora_targets='nothing_here'"):
        Trainer(lora_config(hf_root, tmp_path / "x", **{"model.lora_targets": "nothing_here"}))
    from infogeom.train import load_config
    with pytest.raises(InfogeomError, match="only available for model.arch 'hf' or 'hf-gpt2'"):
        load_config(None, ["model.lora_r=4"])
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def lora_families(tmp_path_factory) -> Path:
    pytest.importorskip("peft")
    base = tmp_path_factory.mktemp("hf-lora-families")
    for family in ("neox", "llama"):
        make_checkpoint(base, family)
    return base


#: PEFT's default LoRA targets of the family (model.lora_targets = ''): the attention projections it names
DEFAULT_TARGETS = {"neox": {"query_key_value"}, "llama": {"q_proj", "v_proj"}}


@pytest.mark.parametrize("family", sorted(DEFAULT_TARGETS))
def test_lora_on_neox_and_llama_trains_only_adapters_of_the_default_targets(lora_families, tmp_path, family):
    from test_hf_checkpoints import run_config

    def cfg(out):
        return run_config(lora_families, family, out, "kfac", **{"model.lora_r": 2, "model.lora_alpha": 4})

    straight = train(cfg(tmp_path / "a"))
    train(cfg(tmp_path / "b"), callbacks=[StopAt(2)])
    second = train(cfg(tmp_path / "b"), resume="latest")
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bit-exact resume
    adapters = [k for k in a["model"] if ".lora_" in k]
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapters}
    assert targets == DEFAULT_TARGETS[family], targets
    assert len(adapters) == 2 * 2 * len(targets)  # A and B, 2 layers
    base = load_model(f"hf:{lora_families / family}")[0].model.state_dict()
    for key, value in a["model"].items():  # base weights untouched; B (zero at start) moved
        if ".lora_" not in key:
            assert torch.equal(value, base[key.removeprefix("model.base_model.model.").replace(".base_layer.", ".")])
    assert any(k.endswith("lora_B.default.weight") and a["model"][k].abs().max() > 0 for k in adapters)
    trainer = Trainer(cfg(tmp_path / "c"))
    try:
        line = trainer.optimizer.coverage
        n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    finally:
        trainer.close()
    assert line.startswith(f"kfac coverage: {len(adapters)} layers, ") and f"{n:,} of {n:,} parameters" in line, line
