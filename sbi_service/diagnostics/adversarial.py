"""Adversarial robustness: how far can a small change of x move the posterior?

Following Glöckler, Deistler and Macke (2023, arXiv:2305.14984): find a perturbation
delta of the observation, within an epsilon-ball, that maximizes

    KL(q(. | x) || q(. | x_adv)) = E_{theta ~ q(.|x)} [log q(theta|x) - log q(theta|x_adv)],

estimated by Monte Carlo with S draws theta_s ~ q(.|x) held fixed during the attack;
the estimate is differentiable in delta through ``log_prob``. The ball is measured
in the estimator's standardized coordinates x_z (``Estimator.standardize_x``: each
data dimension in units of its training standard deviation, of log x on the
log-standardized features, where a step is then a relative change of x): the attacked
observation is x_adv = unstandardize(x_z + delta_z) with

    L2:    ||delta_z||_2 <= eps        L-inf: max_k |delta_z,k| <= eps.

Projected gradient ascent (PGD) on delta_z: a random start inside the ball (the
gradient of the KL vanishes at delta = 0), ``num_steps`` steps of size
2.5 eps / num_steps along the normalized gradient (L2) or its sign (L-inf), each
followed by projection onto the ball, keeping the best delta per observation. The
reported KL is re-estimated at the best delta with fresh draws (``num_eval_samples``),
so it is not inflated by the attack fitting its own draws.

Shapes: x (n, *x_shape); the result's curves are means over the n observations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_service.diagnostics.base import Check, DiagnosticResult
from sbi_service.estimators.base import Estimator

EPSILONS = (0.1, 0.2, 0.5, 1.0, 2.0)
NORMS = ("l2", "linf")


def monte_carlo_kl(estimator: Estimator, theta_s: Tensor, log_q: Tensor, x_adv: Tensor) -> Tensor:
    """KL(q(.|x) || q(.|x_adv)) per observation, (n,).

    theta_s (n, S, d) drawn from q(.|x), log_q (n, S) their log q(.|x), x_adv (n, *x_shape).
    """
    n, s, d = theta_s.shape
    context = estimator.embed(x_adv).repeat_interleave(s, dim=0)
    log_q_adv = estimator.log_prob_context(theta_s.reshape(n * s, d), context).reshape(n, s)
    return (log_q - log_q_adv).mean(1)


def _draw(
    estimator: Estimator, x: Tensor, num_samples: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draws (n, S, d) from q(.|x) and their log q (n, S), without gradients."""
    with torch.no_grad():
        theta_s = estimator.sample(x, num_samples, generator)
        n, s, d = theta_s.shape
        context = estimator.embed(x).repeat_interleave(s, dim=0)
        log_q = estimator.log_prob_context(theta_s.reshape(n * s, d), context).reshape(n, s)
    return theta_s, log_q


def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.reshape(delta.shape[0], -1)
    factor = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * factor[:, None]).reshape(delta.shape)


def pgd_attack(
    estimator: Estimator,
    x: Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator,
    num_steps: int = 10,
    num_samples: int = 32,
) -> Tensor:
    """The attacked observations x_adv (n, *x_shape) that PGD found; see the module doc."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    theta_s, log_q = _draw(estimator, x, num_samples, generator)
    x_z = estimator.standardize_x(x)
    init = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
    if norm == "linf":
        delta = init * eps
    else:  # half the radius, in a random direction
        delta = _project(init * 1e6, 0.5 * eps, norm)
    step = 2.5 * eps / num_steps
    best = delta.clone()
    best_kl = torch.full((x.shape[0],), -torch.inf, device=x.device)
    for _ in range(num_steps + 1):
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = monte_carlo_kl(estimator, theta_s, log_q, estimator.unstandardize_x(x_z + delta))
            (grad,) = torch.autograd.grad(kl.sum(), delta)
        better = kl.detach() > best_kl
        best_kl = torch.where(better, kl.detach(), best_kl)
        best[better] = delta.detach()[better]
        if norm == "linf":
            direction = grad.sign()
        else:
            flat = grad.reshape(grad.shape[0], -1)
            direction = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
        delta = _project(delta.detach() + step * direction, eps, norm)
    return estimator.unstandardize_x(x_z + best)


def adversarial_robustness(
    estimator: Estimator,
    x: Tensor,
    generator: torch.Generator | None = None,
    epsilons: tuple[float, ...] = EPSILONS,
    norms: tuple[str, ...] = NORMS,
    num_steps: int = 10,
    num_samples: int = 32,
    num_eval_samples: int = 256,
    check_eps: float = 0.5,
    check_norm: str = "l2",
    max_kl: float = 1.0,
) -> DiagnosticResult:
    """KL-versus-epsilon curves of PGD attacks on x (n, *x_shape), for each norm.

    Check: mean KL of the ``check_norm`` attack at ``check_eps`` ``<= max_kl`` (nats).
    Values: ``epsilons`` and, per norm, the mean and median KL at each epsilon.
    """
    if check_norm not in norms or check_eps not in epsilons:
        raise ValueError("check_norm and check_eps must be among the attacked norms/epsilons")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    estimator.eval()
    x = x.to(estimator.x_scale.device)
    curves: dict[str, dict[str, list[float]]] = {}
    for norm in norms:
        means, medians = [], []
        for eps in epsilons:
            x_adv = pgd_attack(estimator, x, eps, norm, generator, num_steps, num_samples)
            theta_s, log_q = _draw(estimator, x, num_eval_samples, generator)
            with torch.no_grad():
                kl = monte_carlo_kl(estimator, theta_s, log_q, x_adv)
            means.append(float(kl.mean()))
            medians.append(float(kl.median()))
        curves[norm] = {"mean_kl": means, "median_kl": medians}
    statistic = curves[check_norm]["mean_kl"][list(epsilons).index(check_eps)]
    return DiagnosticResult(
        name="robustness",
        checks=[Check(f"kl_{check_norm}_eps{check_eps:g}", statistic, max_kl, "<=")],
        values={"num_observations": int(x.shape[0]), "epsilons": list(epsilons), **curves},
    )
