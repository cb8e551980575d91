"""Exact Fubini–Study metric: infogeom's batched Jacobian sweep vs PennyLane, side by side in one run.

Hardware-efficient circuits (RY, RZ on every qubit, then a CNOT chain; per layer) at (qubits, layers) =
(4, 2), (6, 3), (8, 4), (10, 5), complex128, for one parameter set and for a batch of 64 sets. PennyLane
(``default.qubit``, autograd interface) computes the same metric with ``qml.adjoint_metric_tensor`` (exact,
its fastest method for state vectors) and ``qml.metric_tensor(approx=None)`` (Hadamard tests, one spare wire);
its block-diagonal ``metric_tensor(approx="block-diag")`` is timed against ours as well.

* PennyLane runs one parameter set per call; for the batch of 64 it is timed on ``--pl-sets`` sets and
  extrapolated linearly (×64 / pl-sets) — stated in the table as "extrap.".
* A PennyLane method is skipped where its predicted time exceeds ``--budget`` seconds (prediction: the
  previous size's time scaled by P²·2^n); skipped cells are stated.
* Reported: median wall time of ``--repeats`` runs for infogeom (one run for PennyLane), the time ratio, and
  the max |Δ| between the metrics on the sets PennyLane computed. Goal: ≥100× faster than PennyLane's fastest
  exact method at (8, 4) with the same values.

    python benchmarks/quantum.py [--quick] [--budget S] [--out benchmarks/results/quantum.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from infogeom.quantum import fubini_study_metric, hardware_efficient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the peer adapters live with the tests
from peers.pennylane_interop import pennylane_qnode  # noqa: E402

SIZES = [(4, 2), (6, 3), (8, 4), (10, 5)]
METHODS = ("adjoint", "hadamard", "block-diag")


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def pennylane_metric(circuit, method: str):
    import pennylane as qml
    from pennylane import numpy as pnp

    qnode = pennylane_qnode(circuit, lambda: qml.expval(qml.PauliZ(0)), aux_wire=method == "hadamard")
    if method == "adjoint":
        fn = qml.adjoint_metric_tensor(qnode)
    elif method == "hadamard":
        fn = qml.metric_tensor(qnode, approx=None, aux_wire=circuit.n_qubits)
    else:
        fn = qml.metric_tensor(qnode, approx="block-diag")
    return lambda theta: np.asarray(fn(pnp.array(theta.numpy(), requires_grad=True)))


def run(sizes, batch: int, pl_sets: int, budget: float, repeats: int) -> list[dict]:
    rows, last = [], {}
    for n, L in sizes:
        c = hardware_efficient(n, L)
        P, D = c.n_params, 2**n
        g = torch.Generator().manual_seed(n)
        thetas = 2 * torch.pi * torch.rand(batch, c.n_params, generator=g, dtype=torch.float64)
        fubini_study_metric(c, thetas[0])  # warm-up (compiles the gate program)
        ours_1, g1 = timed(partial(fubini_study_metric, c, thetas[0]), repeats)
        ours_b, gb = timed(partial(fubini_study_metric, c, thetas), max(1, repeats // 2))
        ours_bd, gbd = timed(partial(fubini_study_metric, c, thetas[0], approx="block-diag"), repeats)
        row = {"qubits": n, "layers": L, "params": P, "ours_single_s": ours_1, "ours_batch_s": ours_b,
               "ours_block_diag_s": ours_bd, "batch": batch}
        for method in METHODS:
            prev = last.get(method)
            predicted = None if prev is None else prev[0] * (P**2 * D) / (prev[1] ** 2 * prev[2])
            if predicted is not None and predicted > budget:
                row[method] = {"skipped": True, "predicted_s": predicted}
                continue
            fn = pennylane_metric(c, method)
            t1, ref1 = timed(partial(fn, thetas[0]))
            ours_ref = gbd if method == "block-diag" else g1
            entry = {"single_s": t1, "max_abs_diff": float(np.abs(ours_ref.numpy() - ref1).max())}
            if method != "block-diag":
                k = min(pl_sets, batch)
                tk, refs = timed(partial(lambda f, th: [f(t) for t in th], fn, thetas[1:1 + k]))
                entry["batch_s_extrapolated"] = (t1 + tk) / (k + 1) * batch
                entry["batch_sets_timed"] = k + 1
                diffs = [np.abs(gb[i].numpy() - r).max() for i, r in zip(range(1, 1 + k), refs)]
                entry["max_abs_diff"] = float(max([entry["max_abs_diff"], *diffs]))
            row[method] = entry
            last[method] = (t1, P, D)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def cell(method, key, ours):
        e = row[method]
        if e.get("skipped"):
            skip = f"skip (~{e['predicted_s']:.0f} s)"
            return f"{skip:>22}"
        t = e[key]
        return f"{t:9.3g} s {t / ours:8.0f}x  "

    a = f"{row['qubits']:>3} {row['layers']:>3} {row['params']:>4} |"
    single = (f" {row['ours_single_s'] * 1e3:8.2f} ms | {cell('adjoint', 'single_s', row['ours_single_s'])} |"
              f" {cell('hadamard', 'single_s', row['ours_single_s'])} |")
    ob = row["ours_batch_s"]
    batch = (f" {ob:8.3f} s | {cell('adjoint', 'batch_s_extrapolated', ob)} |"
             f" {cell('hadamard', 'batch_s_extrapolated', row['ours_batch_s'])} |")
    diffs = [row[m]["max_abs_diff"] for m in METHODS if not row[m].get("skipped")]
    bd = row["block-diag"]
    bd_cell = "skip" if bd.get("skipped") else f"{bd['single_s'] / row['ours_block_diag_s']:.0f}x"
    return a + single + batch + f" {max(diffs):8.1e} | {bd_cell:>8}"


HEADER = (" n   L    P |  ours (1) | PL adjoint (1): time, ratio | PL metric_tensor (1): time, ratio |"
          " ours (64) | PL adjoint (64, extrap.) | PL metric_tensor (64, extrap.) |  max|Δ|  |"
          " block-diag ratio")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P = [r["params"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(P, [r["ours_single_s"] for r in rows], "o-", label="infogeom (1 set)")
    ax.plot(P, [r["ours_batch_s"] for r in rows], "o--", label="infogeom (64 sets)")
    for method, style in (("adjoint", "s-"), ("hadamard", "^-")):
        pts = [(r["params"], r[method]["single_s"]) for r in rows if not r[method].get("skipped")]
        if pts:
            ax.plot(*zip(*pts), style, label=f"PennyLane {method} (1 set)")
    ax.set(xscale="log", yscale="log", xlabel="parameters P", ylabel="seconds",
           title="Exact Fubini–Study metric, hardware-efficient circuits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes (4,2), (6,3) only; fewer repeats")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pl-sets", type=int, default=2,
                    help="extra PennyLane sets timed for the batch estimate")
    ap.add_argument("--budget", type=float, default=180.0,
                    help="skip a PennyLane call predicted above this many seconds")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (default 1: PennyLane's numpy kernels use one core too)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quantum.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = SIZES[:2] if args.quick else SIZES
    repeats = 3 if args.quick else args.repeats
    print(HEADER)
    rows = run(sizes, args.batch, 1 if args.quick else args.pl_sets, args.budget, repeats)
    import pennylane as qml

    meta = {"torch": torch.__version__, "pennylane": qml.version(), "threads": torch.get_num_threads(),
            "machine": platform.platform(), "processor": platform.processor(), "quick": args.quick,
            "dtype": "complex128",
            "note": "PennyLane batch times are extrapolated linearly from the timed sets"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
