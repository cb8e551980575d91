import pytest
import torch

from infogeom.models import GPT, GPTConfig

# The suite runs on 2 cores with pytest-xdist (-n 2): one intra-op thread per worker is fastest for tiny models.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_gpt(dtype=torch.float64, **overrides) -> GPT:
    """A GPT small enough for dense P×P oracles (≈1k parameters)."""
    cfg = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, attention="math")
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg)).to(dtype)


def random_batch(vocab=11, B=2, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)


def own_optimizers() -> list[str]:
    """The library's registered optimizers, without those a benchmark module imported by another test adds
    (SOAP, PSGD-Kron from heavyball, a bench extra)."""
    from infogeom.optim.registry import OPTIMIZERS

    return sorted(n for n, builder in OPTIMIZERS.items() if builder.__module__.startswith("infogeom."))
