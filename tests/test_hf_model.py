"""HFCausalLM adapter around transformers' GPT-2. Oracles: infogeom's GPT with the same weights, and finite
differences of the gradient for Hessian-vector products through the eager (math) attention path."""

import sys

import pytest
import torch
from conftest import random_batch
from torch.func import functional_call
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2 import modeling_gpt2

from infogeom.errors import InfogeomError
from infogeom.geometry import HessianOperator
from infogeom.models import GPT, GPTConfig, lm_loss, math_attention
from infogeom.models.hf import HFCausalLM

SHAPE = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_hf(dtype=torch.float64):
    return HFCausalLM.from_gpt2(**SHAPE).to(dtype)


def test_logits_shape_block_size_and_parameter_count():
    model = tiny_hf(torch.float32)
    x, _ = random_batch(vocab=11, B=3, T=8)
    assert model(x).shape == (3, 8, 11) and model(x[:, :5]).shape == (3, 5, 11)
    assert model.block_size == 8
    with pytest.raises(InfogeomError, match="sequence length 9 exceeds the model's block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    gpt = GPT(GPTConfig(**SHAPE))  # same architecture, independent implementation
    assert model.num_parameters() == gpt.num_parameters()
    assert model.num_parameters(non_embedding=True) == gpt.num_parameters(non_embedding=True)
    assert model.generate(x[:, :2], 4, generator=torch.Generator().manual_seed(0)).shape == (3, 6)


def test_logits_equal_infogeom_gpt_with_the_same_weights():
    gpt = GPT(GPTConfig(**SHAPE)).double().eval()
    cfg = GPT2Config(vocab_size=11, n_positions=8, n_layer=2, n_head=2, n_embd=8, activation_function="gelu",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    model = HFCausalLM(GPT2LMHeadModel(cfg)).double().eval()
    src = gpt.state_dict()
    with torch.no_grad():
        for name, p in model.model.transformer.named_parameters():
            ours = name.replace("h.", "blocks.", 1)
            conv1d = p.dim() == 2 and not name.startswith(("wte", "wpe"))  # Conv1D stores [in, out]
            p.copy_(src[ours].T if conv1d else src[ours])
    x, _ = random_batch(vocab=11, B=4, T=8, seed=3)
    torch.testing.assert_close(model(x), gpt(x), rtol=1e-12, atol=1e-12)


def test_loss_decreases_with_adamw():
    torch.manual_seed(0)
    model = tiny_hf(torch.float32)
    x, y = random_batch(vocab=11, B=8, T=8, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_sdpa_and_eager_paths_agree_and_switch(monkeypatch):
    calls = []
    original = modeling_gpt2.eager_attention_forward
    monkeypatch.setattr(modeling_gpt2, "eager_attention_forward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    model = tiny_hf()
    x, _ = random_batch(vocab=11, B=2, T=8)
    assert model.attention == "sdpa"
    fast = model(x)
    assert calls == []
    with math_attention(model):  # the context manager the geometry code uses
        assert model.attention == "math"
        slow = model(x)
    assert len(calls) == SHAPE["n_layer"] and model.attention == "sdpa"
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    model.set_attention("math")
    model(x)
    assert len(calls) == 2 * SHAPE["n_layer"]
    with pytest.raises(InfogeomError, match="unknown attention path 'flash'"):
        model.set_attention("flash")


def test_hessian_vector_product_through_eager_path_matches_finite_differences():
    model = tiny_hf()
    batch = random_batch(vocab=11, B=2, T=8, seed=5)
    op = HessianOperator(model, batch)  # double backward, math attention inside
    params = {n: p.detach() for n, p in model.named_parameters()}
    assert op.names == list(params)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vs = dict(zip(params, torch.split(v, [p.numel() for p in params.values()])))

    def grad_at(eps):  # plain single-backward gradient on the default sdpa path
        shifted = {n: (p + eps * vs[n].view_as(p)).requires_grad_(True) for n, p in params.items()}
        loss = lm_loss(functional_call(model, shifted, (batch[0],)), batch[1])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(shifted.values()))])

    eps = 1e-6  # central differences: error O(eps²) (measured 6e-8 relative here), round-off ~1e-10
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    hv = op.matvec(v)
    assert torch.linalg.vector_norm(hv - fd) <= 1e-6 * torch.linalg.vector_norm(fd)
    u = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(u @ op.matvec(v), v @ op.matvec(u), rtol=1e-10, atol=1e-12)  # symmetry


def test_bad_arguments_and_missing_transformers(monkeypatch):
    with pytest.raises(InfogeomError, match=r"model.n_embd \(10\) must be divisible by model.n_head \(3\)"):
        HFCausalLM.from_gpt2(vocab_size=11, block_size=8, n_layer=1, n_head=3, n_embd=10)
    with pytest.raises(InfogeomError, match="model.block_size must be a positive integer"):
        HFCausalLM.from_gpt2(vocab_size=11, block_size=0, n_layer=1, n_head=2, n_embd=8)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(InfogeomError, match=r"optional 'transformers' package: pip install 'infogeom\[hf\]'"):
        HFCausalLM.from_gpt2(**SHAPE)


def test_token_chunked_fisher_and_ggn_on_gpt2():
    """GPT-2's tied head found through ``get_output_embeddings``; chunks of 3 of 10 tokens equal the unchunked
    products (themselves checked against dense oracles on infogeom's GPT)."""
    from infogeom.geometry import FisherOperator, GGNOperator

    model, batch = tiny_hf(), random_batch(vocab=11, B=2, T=5)
    for cls in (FisherOperator, GGNOperator):
        ref, op = cls(model, batch, token_chunk=None), cls(model, batch, token_chunk=3)
        assert "head 'model.lm_head'" in repr(op)
        V = torch.randn(ref.dim, 2, dtype=torch.float64)
        torch.testing.assert_close(op @ V, ref @ V, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(op.gradient, ref.gradient, rtol=1e-10, atol=1e-14)
