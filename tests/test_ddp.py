"""DDP: ``torchrun --nproc_per_node=2`` (gloo, CPU) via the CLI equals one process with the same global batch.

Oracle: the same config trained in this process. Both ranks must end with bit-identical parameters; the loss
curve and final parameters must match the 1-process run to float tolerance (all-reduce sums in another order).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train import corpus_fixture, one_thread_fixture, read_jsonl, tiny_overrides  # noqa: F401

from infogeom.train import load_config, train

# Runs ``infogeom.cli.main(["train", ...])`` on each rank, with a callback saving the rank's final parameters.
LAUNCHED = textwrap.dedent("""
    import sys
    import torch
    import infogeom.cli.train as command
    from infogeom.cli import main
    from infogeom.train import Callback, Trainer

    class SaveParameters(Callback):
        def on_train_end(self, trainer):
            state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            torch.save({"world_size": trainer.world_size, "state": state},
                       f"{sys.argv[1]}/rank{trainer.rank}.pt")

    command.Trainer = lambda cfg, callbacks=(), resume=None: Trainer(cfg, [SaveParameters()], resume)
    sys.exit(main(["train", *sys.argv[2:]]))
""")


def test_two_process_ddp_matches_one_process(corpus, tmp_path):
    extra = {"grad_accum": 2, "max_steps": 8, "ckpt_every": 4}
    single = train(load_config(None, tiny_overrides(corpus, tmp_path / "single", **extra)))

    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    args = [x for item in tiny_overrides(corpus, tmp_path / "ddp", **extra) for x in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path), *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results:") == 1  # rank 0 prints, rank 1 stays quiet

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    for name, p0 in ranks[0]["state"].items():
        assert torch.equal(p0, ranks[1]["state"][name]), name
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "ckpt_00000008.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 2
    reference = torch.load(single.checkpoint, weights_only=True)["model"]
    for name, p in reference.items():
        torch.testing.assert_close(ckpt["model"][name], p, rtol=1e-4, atol=1e-5, msg=name)
        assert torch.equal(ckpt["model"][name], ranks[0]["state"][name])

    logged = read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in logged] == [r["step"] for r in single.history]
    for ours, ref in zip(logged, single.history):
        for key in ("loss", "val_loss", "train_loss_eval", "lr", "tokens"):
            if key in ref:
                assert ours[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (ref["step"], key)


def test_two_process_ddp_with_a_parameter_subset_and_kfac_matches_one_process(corpus, tmp_path):
    """``optim.params`` under DDP: K-FAC on the subset's linear maps, the rest frozen on every rank. The empirical
    Fisher makes the factors a deterministic function of the global batch (the default MC Fisher draws its labels
    from each rank's own stream, so it is not comparable with one process)."""
    from infogeom.train import Trainer

    extra = {"grad_accum": 2, "max_steps": 6, "ckpt_every": 6, "optim.name": "kfac",
             "optim.params": "blocks.0.mlp.*,ln_f.*", "optim.options.fisher": "empirical"}
    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "single", **extra))
    trainer = Trainer(cfg)
    try:
        initial = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        trainable = {k for k, v in trainer.model.named_parameters() if v.requires_grad}
    finally:
        trainer.close()
    single = train(load_config(None, tiny_overrides(corpus, tmp_path / "single", **extra)))

    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    args = [x for item in tiny_overrides(corpus, tmp_path / "ddp", **extra) for x in ("--set", item)]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path), *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["state"] for r in (0, 1)]
    reference = torch.load(single.checkpoint, weights_only=True)["model"]
    assert trainable and set(initial) - trainable
    for name, p0 in initial.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], reference[name], rtol=1e-4, atol=1e-5, msg=name)
        if name in trainable:
            assert not torch.equal(ranks[0][name], p0), name
        else:  # frozen: bit-identical to the initialization, in both runs
            assert torch.equal(ranks[0][name], p0) and torch.equal(reference[name], p0), name
