"""GPT model: attention paths, weight tying, norms, dropout, parameter/FLOP counts, generation.

Oracles: the explicit float64 formulas of each piece (softmax attention, RMSNorm, parameter count by hand,
greedy decoding as an argmax loop), and an untied copy of the model for the tied-gradient check.
"""

import math

import pytest
import torch
from conftest import random_batch, tiny_gpt
from test_train import one_thread_fixture  # noqa: F401  (tiny models: one thread)

from infogeom.errors import InfogeomError
from infogeom.models import GPT, GPTConfig, generate, lm_loss, math_attention


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    lm_loss(model(batch[0]), batch[1]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_sdpa_and_math_attention_agree_in_float64(norm):
    model = tiny_gpt(n_layer=2, norm=norm, attention="sdpa")
    batch = random_batch()
    logits_sdpa, grads_sdpa = model(batch[0]), _grads(model, batch)
    with math_attention(model):
        assert all(b.attn.path == "math" for b in model.blocks)
        logits_math, grads_math = model(batch[0]), _grads(model, batch)
    assert model.config.attention == "sdpa" and all(b.attn.path == "sdpa" for b in model.blocks)
    torch.testing.assert_close(logits_sdpa, logits_math, rtol=1e-12, atol=1e-12)
    for name in grads_sdpa:
        torch.testing.assert_close(grads_sdpa[name], grads_math[name], rtol=1e-10, atol=1e-12)


def test_math_attention_matches_explicit_formula():
    """One block's attention output against softmax(QKᵀ/√d + causal mask)·V written from scratch."""
    model = tiny_gpt()
    attn = model.blocks[0].attn
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    B, T, C, H = 2, 5, 8, 2
    q, k, v = (t.reshape(B, T, H, C // H).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))
    y = torch.zeros(B, H, T, C // H, dtype=torch.float64)
    for t in range(T):  # position t attends to positions 0..t only
        w = torch.softmax((q[:, :, t:t + 1] @ k[:, :, : t + 1].transpose(-2, -1)) / math.sqrt(C // H), dim=-1)
        y[:, :, t] = (w @ v[:, :, : t + 1]).squeeze(2)
    expected = attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x), expected, rtol=1e-12, atol=1e-12)


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_gpt()
    x, _ = random_batch()
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 11
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-14)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_weight_tying_shares_storage_and_sums_gradients():
    tied = tiny_gpt(tie_weights=True)
    assert tied.lm_head.weight is tied.wte.weight
    assert "lm_head.weight" not in dict(tied.named_parameters())
    untied = tiny_gpt(tie_weights=False)
    untied.load_state_dict({**tied.state_dict(), "lm_head.weight": tied.wte.weight.detach().clone()})
    batch = random_batch()
    torch.testing.assert_close(tied(batch[0]), untied(batch[0]))
    g_tied, g_untied = _grads(tied, batch), _grads(untied, batch)
    # The tied matrix receives both uses' gradients: embedding lookup + output projection.
    torch.testing.assert_close(g_tied["wte.weight"], g_untied["wte.weight"] + g_untied["lm_head.weight"])


def test_rmsnorm_and_layernorm_match_their_formulas():
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    rms = tiny_gpt(norm="rmsnorm").blocks[0].ln_1
    with torch.no_grad():
        rms.weight.copy_(torch.linspace(0.5, 2.0, 8))
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * rms.weight)
    ln = tiny_gpt(norm="layernorm").blocks[0].ln_1
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias)
    assert isinstance(tiny_gpt(norm="rmsnorm").ln_f, torch.nn.RMSNorm)


def test_dropout_active_in_train_mode_and_off_in_eval():
    model = tiny_gpt(dropout=0.5, attention="sdpa")
    reference = tiny_gpt(dropout=0.0, attention="sdpa")
    reference.load_state_dict(model.state_dict())
    x, _ = random_batch()
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("tie,bias,norm", [(True, True, "layernorm"), (False, False, "layernorm"),
                                           (True, False, "rmsnorm")])
def test_num_parameters_matches_hand_count(tie, bias, norm):
    V, T, L, C = 13, 16, 3, 12
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=3, n_embd=C, bias=bias,
                          tie_weights=tie, norm=norm))
    norm_params = C if (norm == "rmsnorm" or not bias) else 2 * C
    b = 1 if bias else 0
    per_block = (2 * norm_params
                 + (C * 3 * C + b * 3 * C) + (C * C + b * C)        # attention: c_attn, c_proj
                 + (C * 4 * C + b * 4 * C) + (4 * C * C + b * C))   # MLP: c_fc, c_proj
    embeddings = V * C + T * C
    expected = embeddings + L * per_block + norm_params + (0 if tie else V * C)
    assert model.num_parameters() == expected
    non_emb = expected - T * C - (0 if tie else V * C)
    assert model.num_parameters(non_embedding=True) == non_emb
    assert model.flops_per_token() == 6 * non_emb + 12 * L * T * C
    assert model.flops_per_token(seq_len=4) == 6 * non_emb + 12 * L * 4 * C


def test_generate_shapes_and_seeded_determinism():
    model = tiny_gpt(dtype=torch.float32).eval()
    idx = torch.zeros(3, 2, dtype=torch.long)
    out = model.generate(idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert out.shape == (3, 14) and out.dtype == torch.long
    assert torch.equal(out[:, :2], idx) and int(out.max()) < 11 and int(out.min()) >= 0
    again = model.generate(idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))
    other = model.generate(idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    assert not torch.equal(out, other)


def test_greedy_and_top1_generation_equal_an_argmax_loop():
    model = tiny_gpt(dtype=torch.float32).eval()
    idx = torch.tensor([[1, 2, 3]])
    expected = idx.clone()
    for _ in range(12):  # longer than block_size (8): the context window must slide
        logits = model(expected[:, -8:])[:, -1]
        expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(idx, 12, temperature=0.0), expected)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, idx, 12, 8, temperature=0.7, top_k=1, generator=g), expected)


def test_too_long_sequence_and_bad_config_are_rejected():
    model = tiny_gpt()
    with pytest.raises(InfogeomError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    for bad in (dict(n_layer=0), dict(n_embd=10, n_head=4), dict(dropout=1.0), dict(norm="batchnorm"),
                dict(attention="flash"), dict(vocab_size=-1)):
        with pytest.raises(InfogeomError):
            GPTConfig(**bad).validate()
    with pytest.raises(InfogeomError, match="attention"):
        model.set_attention("flash")
