"""Training behaviour of every registered optimizer on a small GPT: progress versus SGD, bit-exact resume
through ``state_dict``, LR schedulers, and survival of non-finite gradients / failed decompositions."""

import io
import warnings

import pytest
import torch

from infogeom.models import GPT, GPTConfig, lm_loss
from infogeom.optim import build_optimizer

VOCAB, B, T = 11, 16, 16

# (lr, options) per optimizer: frequent factor/decomposition refreshes so short runs cross those boundaries.
SETTINGS = {
    "kfac": (3e-3, dict(cov_every=2, inv_every=3, adamw_lr=1e-2, damping=1e-3, kl_clip=1e-3)),
    "ekfac": (1e-2, dict(cov_every=2, inv_every=3)),
    "ngcg": (1.0, dict(cg_iters=5, curvature_batch=4)),
    "muon": (1e-2, {}),
    "fisher-muon": (3e-2, dict(cov_every=2, inv_every=3, exponent=0.5)),
}


def small_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=1, n_head=2, n_embd=16, attention="math"))


def markov_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sequences from a fixed sparse Markov chain (each token has 2 likely successors): learnable
    structure."""
    g = torch.Generator().manual_seed(1234)
    logits = torch.full((VOCAB, VOCAB), -4.0)
    logits[torch.arange(VOCAB)[:, None], torch.randint(0, VOCAB, (VOCAB, 2), generator=g)] = 2.0
    probs = logits.softmax(-1)
    g = torch.Generator().manual_seed(seed)
    seq = torch.empty(n * B, T + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, VOCAB, (n * B,), generator=g)
    for t in range(T):
        seq[:, t + 1] = torch.multinomial(probs[seq[:, t]], 1, generator=g)[:, 0]
    return [(s[:, :-1], s[:, 1:]) for s in seq.split(B)]


def train(model, opt, batches, scheduler=None) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def sgd_best() -> float:
    """Best SGD (lr tuned on a grid) mean loss over the last 10 of 30 steps."""
    batches = markov_batches(30)
    results = []
    for lr in (0.1, 0.3, 1.0, 3.0):
        model = small_gpt()
        losses = train(model, build_optimizer("sgd", model, lr), batches)
        finite = bool(torch.isfinite(torch.tensor(losses)).all())
        results.append(sum(losses[-10:]) / 10 if finite else float("inf"))
    return min(results)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_optimizer_beats_tuned_sgd_per_step(name, sgd_best):
    lr, options = SETTINGS[name]
    model = small_gpt()
    losses = train(model, build_optimizer(name, model, lr, 0.0, **options), markov_batches(30))
    ours = sum(losses[-10:]) / 10
    assert ours < sgd_best - 0.05, (name, ours, sgd_best)


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_state_dict_round_trip_resumes_bit_exactly(name):
    lr, options = SETTINGS[name]
    batches = markov_batches(8, seed=1)
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))  # noqa: E731

    straight = small_gpt()
    opt = build_optimizer(name, straight, lr, 0.1, **options)
    train(straight, opt, batches, sched(opt))

    first = small_gpt()
    opt = build_optimizer(name, first, lr, 0.1, **options)
    sch = sched(opt)
    train(first, opt, batches[:4], sch)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(), "sched": sch.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # what the trainer's checkpoints allow

    resumed = small_gpt()
    resumed.load_state_dict(ckpt["model"])
    opt = build_optimizer(name, resumed, lr, 0.1, **options)
    sch = sched(opt)
    opt.load_state_dict(ckpt["opt"])
    sch.load_state_dict(ckpt["sched"])
    train(resumed, opt, batches[4:], sch)
    assert all(torch.equal(a, b) for a, b in zip(_params(straight), _params(resumed)))
    assert not all(torch.equal(a, b) for a, b in zip(_params(straight), _params(first)))  # it did move


@pytest.mark.parametrize("name", ["kfac", "ekfac", "fisher-muon", "ngcg"])
def test_injected_nan_gradient_is_skipped_with_a_warning(name):
    lr, options = SETTINGS[name]
    model = small_gpt()
    opt = build_optimizer(name, model, lr, 0.1, **options)
    batches = markov_batches(6, seed=2)
    train(model, opt, batches[:3])
    damping = _damping(opt)
    x, y = batches[3]
    opt.zero_grad()
    lm_loss(model(x), y).backward()
    next(model.parameters()).grad.view(-1)[0] = float("nan")
    before = _params(model)
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model)))
    assert _damping(opt) > damping
    losses = train(model, opt, batches[4:])
    assert all(torch.isfinite(p).all() for p in model.parameters()) and all(map(lambda v: v == v, losses))
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(model)))


def _damping(opt) -> float:
    return opt.core.damping if hasattr(opt, "core") else opt.state[next(iter(opt.state))]["damping"]


@pytest.mark.parametrize("name", ["kfac", "ekfac", "fisher-muon"])
def test_failed_eigendecomposition_is_skipped_with_a_warning(name, monkeypatch):
    lr, options = SETTINGS[name]
    model = small_gpt()
    opt = build_optimizer(name, model, lr, 0.1, **options)
    batches = markov_batches(5, seed=3)
    train(model, opt, batches[:3])  # next step (k = 3) decomposes
    real_eigh = torch.linalg.eigh

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("simulated: the algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    before, damping = _params(model), _damping(opt)
    x, y = batches[3]
    opt.zero_grad()
    lm_loss(model(x), y).backward()
    with pytest.warns(RuntimeWarning, match="eigendecomposition failed"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model))) and _damping(opt) > damping
    monkeypatch.setattr(torch.linalg, "eigh", real_eigh)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train(model, opt, batches[4:])
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(model)))
