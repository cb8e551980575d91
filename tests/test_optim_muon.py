"""The Muon + AdamW baseline and the hybrid-optimizer plumbing (shared groups/state, schedulers, resume)."""

import copy

import torch
from conftest import tiny_gpt

from infogeom.models import lm_loss
from infogeom.optim import build_optimizer


def test_muon_on_hidden_matrices_adamw_elsewhere_equal_the_standalone_torch_optimizers():
    model = tiny_gpt(dtype=torch.float32, n_layer=2)
    reference = copy.deepcopy(model)
    opt = build_optimizer("muon", model, 3e-3, 0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)

    named = dict(reference.named_parameters())
    hidden = [n for n in named if n.startswith("blocks.") and n.endswith("weight") and named[n].ndim == 2]
    rest = [n for n in named if n not in hidden]
    assert "wte.weight" in rest and "wpe.weight" in rest and len(hidden) == 8
    muon = torch.optim.Muon([named[n] for n in hidden], lr=3e-3, weight_decay=0.1,
                            adjust_lr_fn="match_rms_adamw")
    matrices = [named[n] for n in rest if named[n].ndim >= 2]
    vectors = [named[n] for n in rest if named[n].ndim < 2]
    adamw = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1},
                               {"params": vectors, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.95))
    ref_sched = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5 ** s) for o in (muon, adamw)]

    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
        for m, opts, scheds in ((model, [opt], [sched]), (reference, [muon, adamw], ref_sched)):
            for o in opts:
                o.zero_grad()
            lm_loss(m(x), y).backward()
            for o, s in zip(opts, scheds):
                o.step()
                s.step()
    assert opt.param_groups[0]["lr"] == 3e-3 * 0.5 ** 3
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name


def test_float32_newton_schulz_is_torch_muon_up_to_bfloat16_rounding():
    """``ns_dtype="float32"`` (FloatNSMuon) takes torch Muon's step: after 4 steps every hidden matrix moved as
    with torch's bfloat16 Newton–Schulz (cosine ≥ 0.99, norm within 2%), and its state loads into torch's."""
    models = [tiny_gpt(dtype=torch.float32, n_layer=2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optimizer("muon", m, 1e-2, 0.1, ns_dtype=d) for m, d in zip(models, ("float32", "bfloat16"))]
    assert type(opts[0]._parts[0]).__name__ == "FloatNSMuon" and type(opts[1]._parts[0]) is torch.optim.Muon
    before = [p.detach().clone() for p in models[0].parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
        for m, o in zip(models, opts):
            o.zero_grad()
            lm_loss(m(x), y).backward()
            o.step()
    hidden = {id(p) for p in opts[0]._parts[0].param_groups[0]["params"]}
    for p, q, p0 in zip(models[0].parameters(), models[1].parameters(), before):
        if id(p) in hidden:
            u, v = p.detach() - p0, q.detach() - p0
            cos = float((u * v).sum() / (u.norm() * v.norm()))
            assert cos >= 0.99 and abs(float(u.norm() / v.norm()) - 1) < 0.02, cos
    opts[1].load_state_dict(opts[0].state_dict())


def test_hybrid_state_dict_relinks_parts_to_the_loaded_groups():
    model = tiny_gpt(dtype=torch.float32)
    opt = build_optimizer("muon", model, 1e-3, 0.0)
    x = torch.randint(0, 11, (2, 8))
    lm_loss(model(x), x).backward()
    opt.step()
    fresh = build_optimizer("muon", model, 1e-3, 0.0)
    fresh.load_state_dict(opt.state_dict())
    for part in fresh._parts:
        assert part.state is fresh.state
        assert all(any(g is h for h in fresh.param_groups) for g in part.param_groups)
    fresh.param_groups[0]["lr"] = 0.25  # a scheduler's edit reaches the part
    assert fresh._parts[0].param_groups[0]["lr"] == 0.25
