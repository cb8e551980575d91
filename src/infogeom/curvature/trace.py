"""Stochastic trace and diagonal estimators with standard errors, on any curvature operator.

- Hutchinson: tr(A) ≈ (1/m) Σ_i v_iᵀ A v_i, v_i Rademacher; unbiased, error O(1/√m).
  Optionally adaptive: probes are added in chunks until SE ≤ ``rtol``·|estimate|.
- Hutch++ (Meyer, Musco, Musco & Woodruff 2021): with m products split in three, Q = orth(A S) for a random
  S [P, m/3]; tr(A) ≈ tr(QᵀAQ) + (3/m) Σ_i g_iᵀ (I−QQᵀ) A (I−QQᵀ) g_i. The low-rank part is exact, the
  deflated remainder is Hutchinson's, so the error is O(1/m) for PSD A. For *every* sketch Q the estimate is
  unbiased (tr(QᵀAQ) + tr((I−QQᵀ)A) = tr A), so the sketch adds no variance of its own: Var = E_Q Var(· | Q),
  and the remainder's sample variance estimates it without bias. What makes a naive error bar too short is
  the few samples (m/3) it rests on, as below. The same holds for a Q from an *approximate* A S: the sketch is
  :meth:`~CurvatureOperator.sketch` (the Hessian's one-sided gradient differences on the CPU, one gradient per
  column instead of an HVP's 2.3), only tr(QᵀAQ) and the residual forms must be exact.
- XTrace (Epperly, Tropp & Webber 2024): Hutch++ made exchangeable. With Ω = [ω_1 … ω_k] and m = 2k
  products (Y = AΩ = QR, Z = AQ), estimate i deflates by the basis of AΩ_{−i} (every column but ω_i) and
  probes the remainder with ω_i, which is independent of that basis, so each of the k estimates is unbiased
  and every product serves both the sketch and the probes; the mean of the k is returned.
- Diagonal: diag(A) ≈ (1/m) Σ_i v_i ⊙ A v_i (Bekas et al. 2007), with per-coordinate SEs; XDiag, the
  exchangeable one-sided analogue of XTrace: diag(P_i A) + ω_i ⊙ (I − P_i) A ω_i.

Leave-one-out in closed form (A symmetric, R invertible): the projector on range(AΩ_{−i}) is
P_i = Q (I − s_i s_iᵀ) Qᵀ with s_i = R^{−T} e_i / ν_i, ν_i = ‖R^{−T} e_i‖ (s_i ⟂ every column of R but r_i).
With H = QᵀAQ, w_i = Qᵀω_i, c_i = s_iᵀ w_i and QᵀAω_i = r_i (so r_iᵀ s_i = 1/ν_i):
  tr(P_i A P_i) + ω_iᵀ(I−P_i)A(I−P_i)ω_i = tr H − s_iᵀHs_i − w_iᵀr_i + 2c_i/ν_i + w_iᵀHw_i − 2c_i w_iᵀHs_i
                                            + c_i² s_iᵀHs_i,
  diag(P_i A) + ω_i ⊙ (I−P_i)Aω_i = rowsum(Q ⊙ AQ) − (Qs_i) ⊙ (AQ s_i) + ω_i ⊙ Q s_i / ν_i.
Cost: 2k products, O(Pk²) flops, O(Pk) memory. The k estimates are exchangeable, not independent: XTrace's
error bar is a jackknife over the columns of Ω (conservative, see :func:`xtrace`), XDiag's likewise per entry.

Standard errors. Every ``stderr`` here is the sample standard error sd/√n of the n averaged quadratic forms
times t_{0.975}(n−1)/z_{0.975} (Student's t over the normal quantile; 1.04 at n = 32, 1.62 at n = 4), so
that ±2·stderr covers the truth about 95% of the time even for few probes (checked by a coverage test on
PSD, indefinite and low-rank-plus-noise matrices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.special import ndtri, stdtrit  # not scipy.stats: 3× the import time of the command's startup

from ..errors import InfogeomError
from ..operators import CurvatureOperator, probe_diagonal, rademacher


@dataclass
class TraceEstimate:
    """``value`` ± ``stderr`` from ``num_probes`` operator products (``method``: 'hutchinson' |
    'hutch++' | 'xtrace')."""

    value: float
    stderr: float
    num_probes: int
    method: str

    def to_dict(self) -> dict:
        return {
            "trace": self.value,
            "stderr": self.stderr,
            "num_probes": self.num_probes,
            "method": self.method,
        }


def t_factor(n: int) -> float:
    """t_{0.975}(n−1)/z_{0.975}: widens sd/√n of n samples so that ±2·SE is a ≈95% interval for their mean
    (the plain sd/√n covers only 92% at n = 16, 85% at n = 4 for normal samples)."""
    return float(stdtrit(n - 1, 0.975) / ndtri(0.975))


def standard_error(samples: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Standard error of the mean of ``samples`` along ``dim``: sd/√n · :func:`t_factor` (n)."""
    n = samples.shape[dim]
    return samples.std(dim) / math.sqrt(n) * t_factor(n)


def _check(num_probes: int, minimum: int) -> None:
    if int(num_probes) < minimum:
        raise InfogeomError(f"need at least {minimum} probes, got {num_probes}")


def hutchinson_samples(
    op: CurvatureOperator, num_probes: int, generator: torch.Generator | None = None, chunk: int = 16
) -> torch.Tensor:
    """The quadratic forms v_iᵀ A v_i ``[num_probes]`` for Rademacher v_i (``chunk`` probes per
    ``quadratic_forms`` call: a product each, or less where the operator has a cheaper form, e.g. the Hessian's
    one-sided differences of the loss, exact in the mean over the sign-symmetric probes)."""
    out = []
    for start in range(0, num_probes, chunk):
        V = rademacher((op.dim, min(chunk, num_probes - start)), op.dtype, op.device, generator)
        out.append(op.quadratic_forms(V, symmetric=True))
    return torch.cat(out)


def hutchinson(
    op: CurvatureOperator,
    num_probes: int = 32,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
    max_probes: int = 1024,
    chunk: int = 16,
) -> TraceEstimate:
    """Hutchinson trace estimate with standard error. With ``rtol``, probes are added ``num_probes`` at a
    time until SE ≤ rtol·|trace| or ``max_probes`` is reached."""
    _check(num_probes, 2)
    samples = hutchinson_samples(op, num_probes, generator, chunk)
    while rtol is not None and len(samples) < max_probes:
        se = standard_error(samples)
        if se <= rtol * samples.mean().abs():
            break
        more = min(num_probes, max_probes - len(samples))
        samples = torch.cat([samples, hutchinson_samples(op, more, generator, chunk)])
    return TraceEstimate(float(samples.mean()), float(standard_error(samples)), len(samples), "hutchinson")


MIN_ADAPTIVE = 16  # residual samples before an adaptive Hutch++ trusts its standard error


def hutchpp(
    op: CurvatureOperator,
    num_probes: int = 48,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
    max_probes: int = 1024,
) -> TraceEstimate:
    """Hutch++ trace estimate from ``num_probes`` products (rounded down to a multiple of 3, at least 6): a
    sketch of k = num_probes/3 columns (:meth:`CurvatureOperator.sketch`, a product or cheaper), tr(QᵀAQ) by k
    quadratic forms and k residual forms, each form a product or cheaper (:meth:`CurvatureOperator.form_cost`).

    With ``rtol`` (adaptive, after A-Hutch++ of Persson, Cortinovis & Kressner 2022): a pilot of
    ``MIN_ADAPTIVE`` residual probes predicts, by SE ∝ 1/√n, how many reach SE ≈ rtol·|trace|. The sketch then
    doubles, grown by block Gram–Schmidt (Q stays orthonormal, earlier products and forms are kept): first if
    those residual forms would cost more than the sketch so far, then while the forms that a doubling is expected
    to save (the residual variance shrinking by the factor the last doubling measured) cost more than it (k
    sketch columns, k two-sided forms and a new pilot; costs from :meth:`CurvatureOperator.sketch_cost` and
    :meth:`CurvatureOperator.form_cost`).
    Then that many *fresh* probes (at most ``max_probes`` products and forms in all, pilots included) give the
    estimate. Pilots are not reused: stopping on the same samples' SE under-covers (88% for 2 SE on
    heavy-tailed residuals), while the fresh sample's size is independent of its values, so its error bar keeps
    its coverage (for *every* orthonormal Q the estimate is unbiased, see the module doc)."""
    _check(num_probes, 6)
    k = int(num_probes) // 3
    Q = torch.empty(op.dim, 0, dtype=op.dtype, device=op.device)

    def grow(Q: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Q extended by an orthonormal basis of (I − QQᵀ) A S for n fresh probes S, and tr(Q_newᵀ A Q_new)."""
        Y = op.sketch(rademacher((op.dim, n), op.dtype, op.device, generator))  # only its span is used
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            Y = Y - Q @ (Q.T @ Y)
        new, _ = torch.linalg.qr(Y)
        return torch.cat([Q, new], dim=1), op.quadratic_forms(new).sum()  # Σ_j q_jᵀAq_j: product-free if it can

    def residual(n: int, chunk: int = 16) -> torch.Tensor:  # chunked: memory O(P·(k + chunk)), not O(P·n)
        out = []
        for start in range(0, n, chunk):
            G = rademacher((op.dim, min(chunk, n - start)), op.dtype, op.device, generator)
            out.append(op.quadratic_forms(G - Q @ (Q.T @ G), symmetric=True))  # (I − QQᵀ)G: sign-symmetric
        return torch.cat(out)

    Q, low_rank = grow(Q, k)
    spent = 2 * k
    if rtol is None:
        rest = residual(k)
    else:
        residual_cost, sketch_cost = op.form_cost(symmetric=True), op.sketch_cost() + op.form_cost()
        last_var = None
        while True:
            pilot = residual(MIN_ADAPTIVE)
            spent += MIN_ADAPTIVE
            value, var = abs(float(low_rank + pilot.mean())), float(pilot.var())
            wanted = math.ceil(var / (rtol * value) ** 2) if value > 0 else max_probes
            more = Q.shape[1]
            if last_var is None:  # first doubling: worth trying while the residual would cost more than the sketch
                worth = wanted * residual_cost > more * sketch_cost
            else:  # later ones: expected to shrink the residual variance as much as the last one did
                saved = wanted * (1 - min(var / last_var, 1.0)) * residual_cost
                worth = saved > more * sketch_cost + MIN_ADAPTIVE * residual_cost
            if not worth or spent + 2 * more + 2 * MIN_ADAPTIVE > max_probes or 2 * more > op.dim:
                break
            Q, extra = grow(Q, more)
            low_rank, spent, last_var = low_rank + extra, spent + 2 * more, var
        rest = residual(max(MIN_ADAPTIVE, min(wanted, max_probes - spent)))
    return TraceEstimate(float(low_rank + rest.mean()), float(standard_error(rest)), spent + len(rest), "hutch++")


@dataclass
class _Sketch:
    """XTrace/XDiag sketch with k columns: Ω [P, k] as int8 ±1 blocks, AΩ = QR with Q [P, k] orthonormal (kept as
    the blocks it was grown in, never concatenated), H = QᵀAQ and W = QᵀΩ [k, k], and Z = AQ [P, k] only for a
    one-block sketch that asked for it (XDiag; XTrace needs H alone). Memory: 5·P·k bytes in float32."""

    omega: list[torch.Tensor]
    Q: list[torch.Tensor]
    R: torch.Tensor
    H: torch.Tensor
    W: torch.Tensor
    Z: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.R.shape[1]


def _exchangeable_sketch(op: CurvatureOperator, num_probes: int, generator: torch.Generator | None,
                         sketch: _Sketch | None = None, keep_z: bool = False) -> _Sketch:
    """The XTrace/XDiag sketch of 2k = ``num_probes`` products (see the module docstring); given an earlier
    ``sketch``, k more columns are appended: Y₂ = AΩ₂ is orthogonalized against Q by block Gram–Schmidt twice
    (Y₂ = Q R₁₂ + Q₂ R₂₂), so R stays upper triangular, and only Z₂ = AQ₂ is new: H's new blocks are QᵀZ₂
    (A symmetric), W's are QᵀΩ₂ and Q₂ᵀΩ. Peak memory beyond the sketch: about four P×k₂ blocks (Ω₂ as
    floats, Y₂ or AQ₂, Q₂ and the QR's workspace)."""
    _check(num_probes, 4)
    k = int(num_probes) // 2
    total = k + (0 if sketch is None else sketch.k)
    if total >= op.dim:
        raise InfogeomError(f"XTrace/XDiag need fewer than {2 * op.dim} products for dimension {op.dim}, "
                            f"got {2 * total}")
    if keep_z and sketch is not None:
        raise InfogeomError("XTrace/XDiag: Z = AQ is kept only for a sketch built in one block")
    omega = rademacher((op.dim, k), torch.int8, op.device, generator)
    Om = omega.to(op.dtype)
    Y = op.matmat(Om)
    if sketch is None:
        (Q2, R), Qs = torch.linalg.qr(Y), []
    else:
        Qs = sketch.Q
        R12 = Y.new_zeros(sketch.k, k)
        for _ in range(2):
            again = [Qb.T @ Y for Qb in Qs]
            for Qb, c in zip(Qs, again):
                Y.addmm_(Qb, c, alpha=-1)
            R12 += torch.cat(again)
        Q2, R22 = torch.linalg.qr(Y)
    del Y
    Z2 = op.matmat(Q2)
    H22, W22 = Q2.T @ Z2, Q2.T @ Om
    if sketch is None:
        H, W = H22, W22
    else:
        R = torch.cat([torch.cat([sketch.R, R12], 1), torch.cat([R12.new_zeros(k, sketch.k), R22], 1)], 0)
        H02 = torch.cat([Qb.T @ Z2 for Qb in Qs])
        H = torch.cat([torch.cat([sketch.H, H02], 1), torch.cat([H02.T, H22], 1)], 0)
        W02 = torch.cat([Qb.T @ Om for Qb in Qs])
        W20 = torch.cat([Q2.T @ ob.to(Q2.dtype) for ob in sketch.omega], 1)
        W = torch.cat([torch.cat([sketch.W, W02], 1), torch.cat([W20, W22], 1)], 0)
    r = R.diagonal().abs()
    if not bool(torch.isfinite(r).all()) or float(r.min()) <= math.sqrt(torch.finfo(R.dtype).eps) * float(r.max()):
        raise InfogeomError("XTrace/XDiag: the sketch AΩ is rank deficient (the operator's numerical rank is "
                            "below the probe count); use hutchpp")
    return _Sketch([*([] if sketch is None else sketch.omega), omega], [*Qs, Q2], R, H, W, Z2 if keep_z else None)


def _loo_basis(R: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(C_j [k, k−1], R'_j, kept columns): R_{−j} = C_j R'_j, so Q C_j spans A Ω_{−j} and A Q C_j = Z C_j."""
    keep = [i for i in range(R.shape[1]) if i != j]
    C, Rj = torch.linalg.qr(R[:, keep])
    return C, Rj, keep


def _unit_dual(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, ν): columns s_i = R^{−T} e_i / ν_i, ν_i = ‖R^{−T} e_i‖."""
    S = torch.linalg.solve_triangular(R.T, torch.eye(R.shape[1], dtype=R.dtype, device=R.device), upper=False)
    nu = S.norm(dim=0)
    return S / nu, nu


def _xtrace_estimates(H: torch.Tensor, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The k leave-one-out estimates [k] from the coefficient-space H = QᵀAQ, W = QᵀΩ and AΩ = QR."""
    S, nu = _unit_dual(R)
    HS, HW = H @ S, H @ W
    c = (S * W).sum(0)
    sHs = (S * HS).sum(0)
    return (torch.trace(H) - sHs - (W * R).sum(0) + 2 * c / nu + (W * HW).sum(0) - 2 * c * (W * HS).sum(0)
            + c**2 * sHs)


def _xtrace(sketch: _Sketch) -> tuple[float, float]:
    """(XTrace estimate, jackknife standard error) of a sketch: O(k⁴) flops on its [k, k] blocks, none on P."""
    H, W, R, k = (sketch.H + sketch.H.T) / 2, sketch.W, sketch.R, sketch.k
    loo = []
    for j in range(k):
        C, Rj, keep = _loo_basis(R, j)
        loo.append(_xtrace_estimates(C.T @ H @ C, C.T @ W[:, keep], Rj).mean())
    stderr = math.sqrt(_jackknife_variance(torch.stack(loo))) * t_factor(k)
    return float(_xtrace_estimates(H, W, R).mean()), stderr


def xtrace(op: CurvatureOperator, num_probes: int = 48, generator: torch.Generator | None = None,
           rtol: float | None = None, max_probes: int = 1024) -> TraceEstimate:
    """XTrace estimate of tr(A) from ``num_probes`` products (rounded down to even): the mean of k = m/2
    exchangeable leave-one-out Hutch++ estimates.

    Standard error by the jackknife over the k columns of Ω: T_{(−j)}, the XTrace of the k − 1 other columns,
    needs no new product (range(AΩ_{−j}) ⊂ range(Q): with R_{−j} = C_j R'_j, its basis is Q C_j and
    A Q C_j = Z C_j), and Var ≈ (k−1)/k Σ_j (T_{(−j)} − T̄)². It is conservative (Efron–Stein): measured on
    P = 400 matrices it is 1.1–2× the actual RMS error (2-SE coverage 95–100%; 1.5–3× at k = P/4). The naive
    sd/√k of the k correlated estimates is too short: the RMS error is 1.05–1.2× it at P = 400 (89–92%
    coverage), up to 1.7× at k = P/4 (76–82%).

    With ``rtol`` (adaptive): the sketch grows, reusing every product, until SE ≤ rtol·|estimate| or
    ``max_probes`` products. Each growth step asks for the columns that SE ∝ 1/√k predicts (a decaying
    spectrum converges faster, so this overshoots rarely), between 8 more and twice as many; the
    conservative jackknife keeps the stopped estimate's 2-SE coverage (tested)."""
    sketch = _exchangeable_sketch(op, num_probes, generator)
    value, stderr = _xtrace(sketch)
    while rtol is not None and stderr > rtol * abs(value) and 2 * sketch.k + 8 <= max_probes:
        k = sketch.k
        wanted = math.ceil(k * (stderr / (rtol * abs(value))) ** 2) if value != 0 else 2 * k
        more = min(max(wanted - k, 4), k, (max_probes - 2 * k) // 2)
        sketch = _exchangeable_sketch(op, 2 * more, generator, sketch)
        value, stderr = _xtrace(sketch)
    return TraceEstimate(value, stderr, 2 * sketch.k, "xtrace")


def _jackknife_variance(loo: torch.Tensor) -> torch.Tensor | float:
    """(k−1)/k Σ_j (T_{(−j)} − T̄)² over the first axis of the k leave-one-out statistics ``loo``."""
    k = loo.shape[0]
    var = (k - 1) / k * ((loo - loo.mean(0)) ** 2).sum(0)
    return float(var) if var.ndim == 0 else var


@dataclass
class DiagonalEstimate:
    """Estimated diagonal ``value [P]`` with per-coordinate ``stderr [P]`` from ``num_probes`` products."""

    value: torch.Tensor
    stderr: torch.Tensor
    num_probes: int


def diagonal(
    op: CurvatureOperator, num_probes: int = 32, generator: torch.Generator | None = None, chunk: int = 16
) -> DiagonalEstimate:
    """Hutchinson diagonal estimate diag(A) ≈ mean_i v_i ⊙ A v_i with per-entry standard errors."""
    _check(num_probes, 2)
    mean, stderr = probe_diagonal(op, int(num_probes), generator, chunk)
    return DiagonalEstimate(mean, stderr * t_factor(int(num_probes)), int(num_probes))


def _xdiag_estimates(Q: torch.Tensor, Z: torch.Tensor, Omega: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The mean over i of diag(P_i A) + ω_i ⊙ (I − P_i) A ω_i [P] (basis Q, Z = AQ, AΩ = QR)."""
    S, nu = _unit_dual(R)
    QS = Q @ S
    return ((Q * Z).sum(1, keepdim=True) - QS * (Z @ S) + Omega * QS / nu).mean(1)


def xdiag(op: CurvatureOperator, num_probes: int = 48, generator: torch.Generator | None = None) -> DiagonalEstimate:
    """XDiag estimate of diag(A) from ``num_probes`` products: the mean of k = m/2 exchangeable estimates
    diag(P_i A) + ω_i ⊙ (I − P_i) A ω_i, with per-entry jackknife standard errors over the columns of Ω (as in
    :func:`xtrace`; the naive ones under-cover). Memory O(P·k), flops O(P·k³) for the jackknife."""
    sketch = _exchangeable_sketch(op, num_probes, generator, keep_z=True)
    Omega, Q, R, Z, k = sketch.omega[0].to(op.dtype), sketch.Q[0], sketch.R, sketch.Z, sketch.k
    loo = []
    for j in range(k):
        C, Rj, keep = _loo_basis(R, j)
        loo.append(_xdiag_estimates(Q @ C, Z @ C, Omega[:, keep], Rj))
    stderr = _jackknife_variance(torch.stack(loo)).sqrt() * t_factor(k)
    return DiagonalEstimate(_xdiag_estimates(Q, Z, Omega, R), stderr, 2 * k)
