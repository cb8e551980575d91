"""Reliability of training: for every registered optimizer an injected NaN gradient skips exactly that step,
and a learning rate blown up to 1e30 mid-run never leaves a diverged checkpoint — the run stops with one line
naming the step and a last good checkpoint that evaluates to a finite loss (or trains on, finite). Oracle for
the monitor: hand-computed medians."""

import math
import re

import pytest
import torch
from conftest import own_optimizers
from reliability_cases import TINY, BlowUpLearningRate, PoisonGradient

from infogeom.errors import InfogeomError
from infogeom.geometry import sample_labels
from infogeom.train import load_config, load_model, train
from infogeom.train.checkpoint import list_checkpoints
from infogeom.train.divergence import MAX_SKIPS, DivergenceMonitor
from infogeom.train.evaluation import eval_batches, mean_loss
from infogeom.train.modeling import prepare_run_data

# Every optimizer the trainer can build for a GPT ("qng" needs quantum layers, which no config adds; the
# trainer's guard runs before any optimizer.step, so it is the same code path for every optimizer).
TRAINABLE = sorted(set(own_optimizers()) - {"qng"})


@pytest.fixture(scope="module", name="corpus")
def corpus_fixture(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000], encoding="utf-8")
    return path


def config(corpus, out, name: str, **extra):
    values = {**TINY, "data.corpus": corpus, "data.cache_dir": corpus.parent / "cache", "out_dir": out,
              "optim.name": name, "optim.lr": 1e-2, "max_steps": 12, "eval_every": 4, "ckpt_every": 4, **extra}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_nan_gradient_skips_the_step_for_every_optimizer(corpus, tmp_path, capsys, name):
    poison = PoisonGradient(at=6)
    result = train(config(corpus, tmp_path / "run", name), callbacks=[poison])
    assert result.step == 12
    assert all(torch.equal(a, b) for a, b in zip(poison.before, poison.after)), "the poisoned step moved weights"
    assert all(torch.isfinite(p).all() for p in load_model(result.checkpoint)[0].parameters())
    assert "step 6: non-finite gradient norm; step skipped" in capsys.readouterr().err


def finite_loss(ckpt) -> float:
    model, _, cfg = load_model(ckpt)
    data = prepare_run_data(cfg.data)
    batches = eval_batches(data, "val", 2, 8, cfg.data.block_size, cfg.seed)
    return float(mean_loss(model, batches, torch.device("cpu")))


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_diverging_run_keeps_a_truly_good_last_checkpoint(corpus, tmp_path, name):
    try:
        train(config(corpus, tmp_path / "run", name), callbacks=[BlowUpLearningRate(at=5)])
    except InfogeomError as exc:
        message = str(exc)
        assert "\n" not in message
        match = re.search(r" at step (\d+); training stopped before saving it and the last good checkpoint is "
                          r"(\S+) \(step (\d+)\)", message)
        assert match, message
        assert int(match.group(1)) > 5 and int(match.group(3)) == 4, message
        assert math.isfinite(finite_loss(match.group(2)))
    for ckpt in list_checkpoints(tmp_path / "run"):  # whatever is on disk is good
        loss = finite_loss(ckpt)
        assert math.isfinite(loss) and loss < 3 * math.log(100), (ckpt, loss)


def test_the_monitor_flags_non_finite_and_exploding_steps_against_the_running_median():
    m = DivergenceMonitor(loss_factor=3.0, update_factor=1000.0, window=4)
    for loss, update in [(4.0, 1.0), (3.0, 2.0), (2.0, 3.0), (5.0, 4.0), (1.0, 5.0)]:
        assert m.check(loss, update) is None
    assert list(m.losses) == [3.0, 2.0, 5.0, 1.0]  # window of 4: median 2.5
    assert m.check_loss(7.4) is None and "7.6 is 3.04x the running median 2.5" in m.check_loss(7.6)
    assert "became nan" in m.check(math.nan, 1.0) and "update norm became inf" in m.check(1.0, math.inf)
    for _ in range(6):
        m.check(2.0, 3.0)
    assert m.check(2.0, 2999.0) is None and "3001 is 1e+03x the running median 3" in m.check(2.0, 3001.0)
    for _ in range(MAX_SKIPS):
        assert m.check(2.0, None) is None
    assert f"non-finite for {MAX_SKIPS + 1} steps in a row" in m.check(2.0, None)
    restored = DivergenceMonitor(window=4)
    restored.load_state_dict(m.state_dict())
    assert restored.state_dict() == m.state_dict()


def test_label_sampling_survives_a_diverged_distribution():
    probs = torch.tensor([[0.25, 0.75, 0.0], [math.nan, 1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, math.inf, 2.0]])
    labels = sample_labels(probs, 2000, torch.Generator().manual_seed(0))
    assert labels.shape == (4, 2000) and int(labels.min()) >= 0 and int(labels.max()) <= 2
    assert (labels[0] != 2).all() and abs((labels[0] == 1).float().mean() - 0.75) < 0.05
    for row in labels[1:]:  # not a distribution: drawn uniformly
        assert abs(torch.bincount(row, minlength=3).float() / 2000 - 1 / 3).max() < 0.05
