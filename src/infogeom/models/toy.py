"""Toy models for worked natural-gradient examples, and linear reparameterizations θ = Aφ of their weights.

Every model maps float inputs ``x [N, 1, d]`` to logits ``[N, 1, C]`` (one "token" per example), so the project's
curvature operators (Fisher, K-FAC, Hessian) and ``lm_loss`` apply unchanged. Layers are bias-free
``nn.Linear`` modules; a bias is a weight on the constant input appended by :class:`AppendOne`.

- :func:`logistic_regression` — p(y=1|x) = σ(wᵀ[x, 1]) as two logits (0, wᵀ[x, 1]); its Fisher is
  F = (1/N) Σ p(1−p) x̃x̃ᵀ (closed form, :func:`logistic_fisher`).
- :func:`mlp_2_16_1` — tanh MLP 2-16-1 with biases, binary output as above.
- :func:`bigram` — a char-bigram softmax: one-hot previous token → V logits (W ∈ R^{V×V}).

:class:`Reparam` rewrites each layer's weight as W = L Φ R (L: out×out, R: in×in, fixed), i.e. the layer acts as
x ↦ L Φ (R x): the trainable parameters become φ = vec(Φ) with θ = Aφ, A = ⊕_layers L ⊗ Rᵀ (row-major vec), a
linear reparameterization under which exact natural gradient is invariant (Amari 1998) and, because it transforms
each layer's input activations and output gradients, so is K-FAC (Luk & Grosse 2018).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


class AppendOne(nn.Module):
    """``x [..., d] -> [x, 1] [..., d + 1]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


class BinaryLogits(nn.Module):
    """``z [..., 1] -> (0, z) [..., 2]``: softmax over them is (1 − σ(z), σ(z))."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=-1)


class FixedLinear(nn.Module):
    """``x -> x Mᵀ`` with a fixed (buffer) matrix M; not an ``nn.Linear``, so K-FAC does not treat it as a layer."""

    def __init__(self, M: torch.Tensor):
        super().__init__()
        self.register_buffer("M", M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.M.T


def logistic_regression(d: int) -> nn.Sequential:
    return nn.Sequential(AppendOne(), nn.Linear(d + 1, 1, bias=False), BinaryLogits())


def mlp_2_16_1(hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(AppendOne(), nn.Linear(3, hidden, bias=False), nn.Tanh(), AppendOne(),
                         nn.Linear(hidden + 1, 1, bias=False), BinaryLogits())


def bigram(vocab: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(vocab, vocab, bias=False))


def logistic_fisher(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """F = (1/N) Σ_n p_n(1 − p_n) x̃_n x̃_nᵀ, x̃ = [x, 1], p = σ(wᵀx̃), for ``x [N, d]``."""
    xt = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    p = torch.sigmoid(xt @ w)
    return (xt * (p * (1 - p))[:, None]).T @ xt / x.shape[0]


def conditioned_matrix(n: int, kappa: float, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """U diag(s) Vᵀ with Haar-random orthogonal U, V and geometric singular values s from κ^{-1/2} to κ^{1/2}
    (condition number κ, determinant ±1)."""
    if n == 1:
        return torch.ones(1, 1, dtype=dtype)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    s = torch.logspace(-0.5 * math.log10(kappa), 0.5 * math.log10(kappa), n, dtype=torch.float64)
    return (U * s) @ V.T.to(dtype)


class Reparam:
    """W = L Φ R per ``nn.Linear`` layer of a model (module doc); κ(A) = ``kappa`` split as κ_L·κ_R.

    ``factors[name] = (L, R)``. :meth:`apply` returns a copy of the model whose layers compute x ↦ L Φ (R x) with
    Φ = L⁻¹ W R⁻¹ (so the function is unchanged); :meth:`dense` is A with θ = A φ on the flattened weights.
    """

    def __init__(self, model: nn.Module, kappa: float, generator: torch.Generator):
        self.kappa = float(kappa)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                out, inp = m.weight.shape
                k_out = math.sqrt(kappa) if out > 1 else 1.0
                self.factors[name] = (conditioned_matrix(out, k_out, generator),
                                      conditioned_matrix(inp, kappa / k_out, generator))

    def apply(self, model: nn.Module) -> nn.Module:
        phi = copy.deepcopy(model)
        for name, (L, R) in self.factors.items():
            parent, _, child = name.rpartition(".")
            holder = phi.get_submodule(parent) if parent else phi
            lin = holder.get_submodule(child)
            with torch.no_grad():
                W = lin.weight.to(torch.float64)
                lin.weight.copy_(torch.linalg.solve(L, W) @ torch.linalg.inv(R))
            setattr(holder, child, nn.Sequential(FixedLinear(R.to(lin.weight.dtype)), lin,
                                                 FixedLinear(L.to(lin.weight.dtype))))
        return phi

    def dense(self) -> torch.Tensor:
        """A = ⊕ L ⊗ Rᵀ: row-major vec(L Φ R) = (L ⊗ Rᵀ) vec(Φ), blocks in module order."""
        return torch.block_diag(*[torch.kron(L, R.T.contiguous()) for L, R in self.factors.values()])


class MLPLM(nn.Module):
    """An attention-free LM: at each position t, an MLP of the concatenated embeddings of tokens t−k+1 … t
    (zeros before the start): logits = W₂ GELU(W₁ [e_{t−k+1}, …, e_t] + b₁) + b₂. ``x [B, T]`` → ``[B, T, V]``."""

    def __init__(self, vocab: int, context: int = 8, n_embd: int = 32, hidden: int = 128):
        super().__init__()
        self.context = int(context)
        self.embed = nn.Embedding(vocab, n_embd)
        self.fc1 = nn.Linear(context * n_embd, hidden)
        self.fc2 = nn.Linear(hidden, vocab)

    @classmethod
    def matching(cls, vocab: int, num_params: int, context: int = 8, n_embd: int = 32) -> MLPLM:
        """The hidden width whose total parameter count is closest to ``num_params``."""
        fixed = vocab * n_embd + vocab
        hidden = max(1, round((num_params - fixed) / (context * n_embd + 1 + vocab)))
        return cls(vocab, context, n_embd, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)  # [B, T, E]
        e = nn.functional.pad(e, (0, 0, self.context - 1, 0))
        windows = e.unfold(1, self.context, 1)  # [B, T, E, k]
        h = windows.transpose(-1, -2).reshape(*x.shape, -1)
        return self.fc2(nn.functional.gelu(self.fc1(h)))
