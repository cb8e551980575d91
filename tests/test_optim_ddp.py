"""K-FAC / EK-FAC / Fisher–Muon / NGCG under DDP: 2 gloo processes (``torch.distributed.run``) with different
data per rank.

Every rank must end with bit-identical parameters (factors all-reduced, decompositions split over the ranks
and broadcast, CG products averaged). Oracle for the all-reduce itself: the factor state after one step equals
the mean over ranks of each rank's local empirical K-FAC factors, computed here with
:func:`infogeom.geometry.kfac.kfac_factors`.
"""

import os
import subprocess
import sys
import textwrap

import torch
from test_optim_training import small_gpt

from infogeom.geometry.kfac import kfac_factors

WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    sys.path.insert(0, sys.argv[2])
    from test_optim_training import markov_batches, small_gpt
    from infogeom.models import lm_loss
    from infogeom.optim import build_optimizer

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), sys.argv[1]
    runs = {
        "kfac": (0.3, dict(cov_every=1, inv_every=2, adamw_lr=1e-2)),
        "ekfac": (1e-2, dict(cov_every=2, inv_every=2)),
        "fisher-muon": (1e-2, dict(cov_every=2, inv_every=2, exponent=0.5)),
        "ngcg": (1.0, dict(cg_iters=4, curvature_batch=4)),
        "empirical": (0.3, dict(fisher="empirical", cov_every=1, inv_every=1)),
    }
    for name, (lr, options) in runs.items():
        model = small_gpt()
        ddp = DDP(model)
        opt = build_optimizer("kfac" if name == "empirical" else name, model, lr, 0.1, **options)
        batches = markov_batches(1 if name == "empirical" else 5, seed=10 + rank)
        for x, y in batches:
            opt.zero_grad()
            lm_loss(ddp(x), y).backward()
            opt.step()
        saved = {"params": [p.detach() for p in model.parameters()], "batch": batches[0]}
        if name == "empirical":
            saved["factors"] = {la.info.name: (opt.core.state[la.weight]["L"], opt.core.state[la.weight]["R"])
                                for la in opt.core.layers}
        torch.save(saved, f"{out}/{name}_{rank}.pt")
    dist.destroy_process_group()
""")


def test_ranks_stay_identical_and_factors_are_averaged(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path), os.path.dirname(__file__)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    initial = [p.detach() for p in small_gpt().parameters()]
    for name in ("kfac", "ekfac", "fisher-muon", "ngcg", "empirical"):
        r0, r1 = (torch.load(tmp_path / f"{name}_{r}.pt", weights_only=True) for r in (0, 1))
        assert not torch.equal(r0["batch"][0], r1["batch"][0])  # the ranks really saw different data
        assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"])), name
        assert not all(torch.equal(a, b) for a, b in zip(r0["params"], initial)), name

    r0, r1 = (torch.load(tmp_path / f"empirical_{r}.pt", weights_only=True) for r in (0, 1))
    local = [kfac_factors(small_gpt(), r["batch"], approx="reduce", fisher="empirical") for r in (r0, r1)]
    for layer, (L, R) in r0["factors"].items():
        assert torch.equal(L, r1["factors"][layer][0]) and torch.equal(R, r1["factors"][layer][1])
        G0, G1 = local[0][layer].G, local[1][layer].G
        assert not torch.allclose(G0, G1, rtol=1e-2)
        torch.testing.assert_close(L, (G0 + G1) / 2, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(R, (local[0][layer].A + local[1][layer].A) / 2, rtol=1e-4, atol=1e-7)
