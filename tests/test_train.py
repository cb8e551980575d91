"""Trainer: learning, bit-exact resume, checkpoints, nan/inf stop, callbacks, schedule, accumulation.

Oracles: an uninterrupted run (for resume), a larger batch (for gradient accumulation), the closed-form
warmup-cosine schedule, and file bytes before/after (for "nothing already written is lost").
"""

import json
import math
from pathlib import Path

import pytest
import torch

import infogeom.train.trainer as trainer_module
from infogeom.errors import InfogeomError
from infogeom.train import Callback, Trainer, load_config, load_model, train
from infogeom.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from infogeom.train.schedule import build_scheduler

TIME_KEYS = {"train_time", "tokens_per_s"}


@pytest.fixture(autouse=True, name="one_thread")
def one_thread_fixture():
    """Tiny models run fastest on one thread (and do not slow down under a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", name="corpus")
def corpus_fixture(tmp_path_factory) -> Path:
    """~60k characters of English (the standard library's help topics: always available offline)."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000], encoding="utf-8")
    return path


def tiny_overrides(corpus: Path, out: Path, **extra) -> list[str]:
    """A ~10k-parameter GPT on ``corpus``: each step takes milliseconds."""
    settings = {
        "data.corpus": str(corpus), "data.cache_dir": str(corpus.parent / "cache"), "data.batch_size": 8,
        "data.block_size": 16, "model.block_size": 16, "model.n_layer": 1, "model.n_head": 2,
        "model.n_embd": 16,
        "max_steps": 12, "optim.warmup_steps": 2, "eval_every": 4, "eval_batches": 2, "log_every": 4,
        "ckpt_every": 4, "device": "cpu", "progress": "false", "tensorboard": "false", "out_dir": str(out),
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


def tiny_config(corpus: Path, out: Path, **extra):
    return load_config(None, tiny_overrides(corpus, out, **extra))


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            trainer.request_stop()


def test_loss_decreases_on_a_tiny_corpus(corpus, tmp_path):
    result = train(tiny_config(corpus, tmp_path / "run", max_steps=60, eval_every=20, **{"model.n_embd": 32}))
    evals = [r for r in result.history if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert evals[0]["val_loss"] == pytest.approx(math.log(result_vocab(result)), abs=0.3)  # uniform at init
    assert result.final_val_loss < evals[0]["val_loss"] - 0.7
    assert all(b["val_loss"] < a["val_loss"] for a, b in zip(evals, evals[1:]))
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0] - 0.7
    assert result.stop_reason == "max_steps" and result.step == 60
    assert read_jsonl(result.metrics_path) == result.history


def result_vocab(result) -> int:
    return load_checkpoint(result.checkpoint)["vocab_size"]


@pytest.mark.parametrize("resume", ["latest", "path"])
def test_resume_is_bit_exact(corpus, tmp_path, resume):
    """12 straight steps == 6 steps, stop (checkpoint), resume, 6 more: parameters, optimizer and logs equal.

    Dropout and grad_accum are on, so the dropout RNG and the data stream must be restored; log_every=4 does
    not divide the stop step, so the losses pending at the checkpoint must carry over too.
    """
    extra = {"model.dropout": 0.1, "grad_accum": 2, "ckpt_every": 5}
    straight = train(tiny_config(corpus, tmp_path / "a", **extra))
    first = train(tiny_config(corpus, tmp_path / "b", **extra), callbacks=[StopAt(6)])
    assert first.stop_reason == "interrupted" and first.step == 6
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["ckpt_00000005.pt", "ckpt_00000006.pt"]
    where = "latest" if resume == "latest" else first.checkpoint
    second = train(tiny_config(corpus, tmp_path / "b", **extra), resume=where)
    assert second.step == 12 and second.stop_reason == "max_steps"

    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])
    assert torch.equal(a["rng"]["ranks"][0]["torch"], b["rng"]["ranks"][0]["torch"])
    logged_a = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert without_time(logged_a) == without_time(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert without_time(second.history) == without_time(straight.history)
    assert second.final_val_loss == straight.final_val_loss


def test_resume_drops_records_logged_after_the_checkpoint(corpus, tmp_path):
    """A crash after the checkpoint leaves extra records; the resumed run rewrites them identically once."""
    straight = train(tiny_config(corpus, tmp_path / "a"))
    train(tiny_config(corpus, tmp_path / "b"), callbacks=[StopAt(6)])
    ckpt = tmp_path / "b" / "checkpoints" / "ckpt_00000004.pt"
    (tmp_path / "b" / "checkpoints" / "ckpt_00000006.pt").unlink()  # as if the run died after step 6's logs
    train(tiny_config(corpus, tmp_path / "b"), resume=ckpt)
    assert without_time(read_jsonl(tmp_path / "b" / "metrics.jsonl")) == without_time(straight.history)


def test_checkpoint_files_are_plain_weights_only_and_pruned(corpus, tmp_path):
    result = train(tiny_config(corpus, tmp_path / "run", ckpt_every=2, keep_last=2))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_00000010.pt", "ckpt_00000012.pt"]
    raw = torch.load(result.checkpoint, weights_only=True)  # no pickled code needed
    assert raw["step"] == 12 and raw["tokens"] == 12 * 8 * 16
    assert raw["config"]["model"]["n_embd"] == 16 and raw["tokenizer"]["spec"] == "char"
    model, tokenizer, cfg = load_model(result.checkpoint)
    assert not model.training and cfg.max_steps == 12 and cfg.out_dir == str(tmp_path / "run")
    for name, p in model.state_dict().items():
        assert torch.equal(p, raw["model"][name])
    assert tokenizer.decode(tokenizer.encode("the cat")) == "the cat"
    assert (tmp_path / "run" / "config.toml").is_file() and (tmp_path / "run" / "tokenizer.json").is_file()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    assert load_config(tmp_path / "run" / "config.toml") == cfg


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"format": "x", "w": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": "x", "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer_module.lm_loss

    def loss_turning_nan(logits, y):  # resumed at step 4: steps 5-6 fine, step 7 onwards nan
        calls["n"] += 1
        loss = real(logits, y)
        return loss * float("nan") if calls["n"] > 2 else loss

    train(tiny_config(corpus, tmp_path / "run"), callbacks=[StopAt(4)])
    before = file_bytes(tmp_path / "run" / "checkpoints")
    monkeypatch.setattr(trainer_module, "lm_loss", loss_turning_nan)
    with pytest.raises(InfogeomError) as err:
        train(tiny_config(corpus, tmp_path / "run"), resume="latest")
    message = str(err.value)
    assert "\n" not in message and "nan at step 7" in message and "ckpt_00000004.pt" in message
    assert file_bytes(tmp_path / "run" / "checkpoints") == before  # no checkpoint of the poisoned state
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert max(steps) == 4


def test_huge_learning_rate_is_caught_as_non_finite(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "run", **{"optim.lr": 1e38, "optim.grad_clip": 0.0,
                                                  "optim.warmup_steps": 0, "optim.name": "sgd"})
    with pytest.raises(InfogeomError, match=r"(loss|update norm) became (nan|inf|-inf) at step \d+"):
        train(cfg)
    assert not list_checkpoints(tmp_path / "run")


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_step_end(self, trainer, metrics):
        assert {"step", "loss", "lr", "tokens", "train_time"} <= set(metrics)
        assert metrics["step"] == trainer.step and math.isfinite(metrics["loss"])
        self.events.append(("step", trainer.step))
        if trainer.step % 3 == 0:
            metrics["custom"] = trainer.step * 10

    def on_evaluate(self, trainer, metrics):
        self.events.append(("eval", trainer.step))
        metrics["eval_custom"] = 1.5

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_callbacks_are_called_in_order_and_their_keys_are_logged(corpus, tmp_path):
    rec = Recorder()
    result = train(tiny_config(corpus, tmp_path / "run", max_steps=8), callbacks=[rec])
    steps = [("step", s) for s in range(1, 9)]
    expected = [("start", 0), ("eval", 0), *steps[:4], ("eval", 4), *steps[4:], ("eval", 8), ("end", 8)]
    assert rec.events == expected
    logged = read_jsonl(result.metrics_path)
    assert [r["custom"] for r in logged if "custom" in r] == [30, 60]
    assert all(r.get("eval_custom") == 1.5 for r in logged if "val_loss" in r)
    step4 = next(r for r in logged if r["step"] == 4 and "loss" in r)
    assert {"step", "loss", "lr", "tokens", "train_time"} <= set(step4)


def test_warmup_cosine_schedule_matches_closed_form():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched = build_scheduler(opt, warmup_steps=4, max_steps=20, lr=0.5, min_lr=0.05)
    seen = []
    for _ in range(24):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for s, lr in enumerate(seen):
        if s < 4:
            expected = 0.5 * (s + 1) / 4
        else:
            progress = min(1.0, (s - 4) / 16)
            expected = 0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr == pytest.approx(expected, rel=1e-12)
    assert seen[3] == pytest.approx(0.5) and seen[20:] == pytest.approx([0.05] * 4)
    assert all(v is None for v in sched.state_dict()["lr_lambdas"])  # only numbers are checkpointed


def test_wsd_schedule_matches_closed_form():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched = build_scheduler(opt, 4, 20, 0.5, 0.05, schedule="wsd", decay_fraction=0.25)  # cooldown: steps 15-19
    seen = []
    for _ in range(24):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * (s + 1) / 4 for s in range(4)] + [0.5] * 11 + [0.05 + 0.45 * (1 - k / 5) for k in range(5)]
    assert seen[:20] == pytest.approx(expected, rel=1e-12) and seen[20:] == pytest.approx([0.05] * 4)
    # before the cooldown the factor does not depend on max_steps
    other = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5), 4, 200, 0.5, 0.05,
                            schedule="wsd", decay_fraction=0.25)
    assert [other.lr_lambdas[0](s) for s in range(15)] == [sched.lr_lambdas[0](s) for s in range(15)]


def test_wsd_cooldown_branch_equals_a_single_run(corpus, tmp_path):
    """A stable-phase checkpoint (one constant-lr stem run) continued with its own max_steps and cooldown is
    bit-for-bit the run that had that WSD schedule from the start — the branches of a scaling sweep share a stem."""
    wsd = {"optim.schedule": "wsd", "optim.min_lr": 0.0, "keep_last": 10}
    stem = train(tiny_config(corpus, tmp_path / "stem", max_steps=16, **wsd, **{"optim.decay_fraction": 0.0}))
    assert stem.step == 16
    branch_cfg = tiny_config(corpus, tmp_path / "branch", max_steps=10, **wsd, **{"optim.decay_fraction": 0.2})
    branch = train(branch_cfg, resume=checkpoint_path(tmp_path / "stem", 8))  # cooldown = steps 8, 9
    single = train(tiny_config(corpus, tmp_path / "single", max_steps=10, **wsd, **{"optim.decay_fraction": 0.2}))
    a, b = load_checkpoint(single.checkpoint), load_checkpoint(branch.checkpoint)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert branch.final_val_loss == single.final_val_loss
    lrs = [r["lr"] for r in read_jsonl(single.metrics_path) if "lr" in r]
    assert lrs[-1] == pytest.approx(2e-3 * 0.5) and lrs[-2] == pytest.approx(2e-3)  # log_every 4: steps 4, 8, 10
    stem_w = load_checkpoint(stem.checkpoint)["model"]
    assert not all(torch.equal(stem_w[k], a["model"][k]) for k in stem_w)


def test_wsd_config_errors():
    with pytest.raises(InfogeomError, match="optim.schedule"):
        load_config(None, ["optim.schedule=linear"])
    with pytest.raises(InfogeomError, match="decay_fraction"):
        load_config(None, ["optim.schedule=wsd", "optim.decay_fraction=1.5"])
    with pytest.raises(InfogeomError, match="cooldown"):
        load_config(None, ["optim.schedule=wsd", "optim.decay_fraction=0.5", "max_steps=80", "optim.warmup_steps=50"])


def test_gradient_accumulation_equals_the_larger_batch(corpus, tmp_path):
    """B=4 × grad_accum=2 draws the same windows as B=8 in one go, so the updates agree to float rounding."""
    common = {"max_steps": 3, "eval_every": 0, "ckpt_every": 0, "log_every": 1}
    big = Trainer(tiny_config(corpus, tmp_path / "a", **common))
    small = Trainer(tiny_config(corpus, tmp_path / "b", grad_accum=2, **{**common, "data.batch_size": 4}))
    for _ in range(3):
        big.train_step()
        small.train_step()
    losses = [torch.stack([loss for _, loss, _ in t._step_buf]) for t in (big, small)]
    torch.testing.assert_close(*losses, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_max_seconds_budget_stops_with_a_checkpoint(corpus, tmp_path):
    result = train(tiny_config(corpus, tmp_path / "run", max_steps=1000, max_seconds=1e-6))
    assert result.stop_reason == "max_seconds" and result.step == 1
    assert result.checkpoint.name == "ckpt_00000001.pt" and result.final_val_loss is not None


def test_a_finished_run_resumed_does_nothing(corpus, tmp_path):
    first = train(tiny_config(corpus, tmp_path / "run", max_steps=4))
    before = file_bytes(tmp_path / "run")
    again = train(tiny_config(corpus, tmp_path / "run", max_steps=4), resume="latest")
    assert again.stop_reason == "already_done" and again.step == 4
    assert again.final_val_loss == first.final_val_loss
    assert file_bytes(tmp_path / "run") == before


def test_fresh_run_refuses_an_existing_run_folder(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path / "run", max_steps=4))
    before = file_bytes(tmp_path / "run")
    with pytest.raises(InfogeomError, match="already holds a training run"):
        train(tiny_config(corpus, tmp_path / "run", max_steps=4))
    assert file_bytes(tmp_path / "run") == before


def test_tensorboard_events_are_written(corpus, tmp_path):
    result = train(tiny_config(corpus, tmp_path / "run", max_steps=4, tensorboard="true"))
    assert result.tensorboard_dir == tmp_path / "run" / "tb"
    assert list(result.tensorboard_dir.glob("events.out.tfevents.*"))


def test_hugging_face_gpt2_trains_and_reloads(corpus, tmp_path):
    from infogeom.models.hf import HFCausalLM

    result = train(tiny_config(corpus, tmp_path / "run", max_steps=16, eval_every=8,
                               **{"model.arch": "hf-gpt2", "optim.lr": 1e-2}))
    evals = [r["val_loss"] for r in result.history if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.3
    model, _, cfg = load_model(result.checkpoint)
    assert isinstance(model, HFCausalLM) and cfg.model.arch == "hf-gpt2"
    assert model.block_size == 16


@pytest.mark.parametrize("name", ["adamw", "sgd", "muon", "kfac", "ekfac", "fisher-muon", "ngcg"])
def test_registered_optimizers_train_checkpoint_and_resume_bit_exactly(corpus, tmp_path, name):
    """Each registered optimizer runs through the unchanged loop; its state survives a weights_only file."""
    extra = {"max_steps": 6, "optim.name": name, "optim.lr": 1e-3}
    straight = train(tiny_config(corpus, tmp_path / "a", **extra))
    train(tiny_config(corpus, tmp_path / "b", **extra), callbacks=[StopAt(3)])
    resumed = train(tiny_config(corpus, tmp_path / "b", **extra), resume="latest")
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_time(resumed.history) == without_time(straight.history)
    assert math.isfinite(straight.final_val_loss)
