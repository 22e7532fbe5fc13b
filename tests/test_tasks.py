"""The built-in sbibm tasks, the LogNormal prior, reference posteriors and observations."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import solve_ivp

from sbi_service.errors import UserError
from sbi_service.simulators.base import Task
from sbi_service.simulators.observations import benchmark_observations
from sbi_service.simulators.priors import PRIOR_TYPES, LogNormal, prior_from_spec
from sbi_service.simulators.reference import mcmc_posterior, sample_reference_posterior
from sbi_service.simulators.tasks import BUILTIN_TASKS, sir
from sbi_service.simulators.tasks import bernoulli_glm as glm
from sbi_service.simulators.tasks import gaussian_linear as gl
from sbi_service.simulators.tasks import lotka_volterra as lv

torch.set_num_threads(1)

EXPECTED = {
    "two_moons": (2, 2),
    "gaussian_linear": (10, 10),
    "gaussian_linear_uniform": (10, 10),
    "slcp": (5, 8),
    "gaussian_mixture": (2, 2),
    "bernoulli_glm": (10, 10),
    "sir": (2, 10),
    "lotka_volterra": (4, 20),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: make() for name, make in BUILTIN_TASKS.items()}


# --- registry, shapes, seeding ------------------------------------------------------------


def test_registry_has_the_eight_tasks(tasks):
    assert set(tasks) == set(EXPECTED)
    for name, task in tasks.items():
        assert task.name == name
        assert task.dim_theta == EXPECTED[name][0]
        assert task.x_shape == (EXPECTED[name][1],)
        assert task.description and "\n" not in task.description
        assert task.takes_generator()
        assert task.log_likelihood is not None
        assert task.info()["prior"] == task.prior.spec
        assert prior_from_spec(task.prior.spec).spec == task.prior.spec


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_dtype_and_seeding(tasks, name):
    task = tasks[name]
    theta = task.prior.sample(16, gen(0))
    x1 = task.simulator(theta, generator=gen(1))
    x2 = task.simulator(theta, generator=gen(1))
    x3 = task.simulator(theta, generator=gen(2))
    assert x1.shape == (16, EXPECTED[name][1])
    assert x1.dtype == torch.float32
    assert torch.isfinite(x1).all()
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)
    # a batch is the same as its rows' randomness laid out in order: batch of one works
    assert task.simulator(theta[:1], generator=gen(1)).shape == (1, EXPECTED[name][1])
    ll = task.log_likelihood(theta, x1[0])
    assert ll.shape == (16,) and ll.dtype == torch.float32
    assert torch.isfinite(ll[0])


@pytest.mark.parametrize("name", ["two_moons", "sir"])
def test_bad_theta_shape_is_a_user_error(tasks, name):
    with pytest.raises(UserError, match="expected"):
        tasks[name].simulator(torch.zeros(3, 7))
    with pytest.raises(UserError, match="observation"):
        tasks[name].log_likelihood(tasks[name].prior.sample(2), torch.zeros(99))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_simulating_1000_is_fast(tasks, name):
    task = tasks[name]
    theta = task.prior.sample(1000, gen(0))
    start = time.perf_counter()
    task.simulator(theta, generator=gen(1))
    assert time.perf_counter() - start < 10.0


# --- known moments -----------------------------------------------------------------------


def test_gaussian_linear_moments(tasks):
    for name in ("gaussian_linear", "gaussian_linear_uniform"):
        theta = tasks[name].prior.sample(1, gen(3)).expand(20000, -1)
        x = tasks[name].simulator(theta, generator=gen(4))
        assert torch.allclose(x.mean(0), theta[0], atol=0.015)
        assert torch.allclose(x.var(0), torch.full((10,), 0.1), rtol=0.05)
    prior = tasks["gaussian_linear"].prior
    assert torch.allclose(prior.std, torch.full((10,), math.sqrt(0.1)))
    assert tasks["gaussian_linear_uniform"].prior.spec["low"] == [-1.0] * 10


def test_gaussian_mixture_moments(tasks):
    task = tasks["gaussian_mixture"]
    theta = torch.tensor([[2.0, -3.0]]).expand(40000, -1)
    d = task.simulator(theta, generator=gen(5)) - theta
    assert d.mean(0).abs().max() < 0.02
    assert torch.allclose(d.var(0), torch.full((2,), 0.505), rtol=0.04)
    # half of the draws come from the narrow component: |d| < 0.4 in both coordinates
    narrow = (d.abs() < 0.4).all(-1).float().mean()
    assert abs(narrow - (0.5 * 0.0999 + 0.5 * 0.99994)) < 0.02


def _two_moons_log_density(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | theta) written independently of the task module: ``theta (2,)``, ``x (m, 2)``."""
    c = math.sqrt(0.5)
    z0, z1 = c * (theta[0] + theta[1]), c * (theta[1] - theta[0])
    u = x[:, 0].double() + abs(z0) - 0.25
    v = x[:, 1].double() - z1
    rho = torch.sqrt(u**2 + v**2)
    log_r = -0.5 * ((rho - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi))
    log_dens = log_r - torch.log(math.pi * rho)
    return torch.where(u > 0, log_dens, torch.full_like(log_dens, -math.inf))


def test_two_moons_geometry_and_likelihood(tasks):
    task = tasks["two_moons"]
    x = task.simulator(torch.zeros(5000, 2), generator=gen(6)).double()
    u, v = x[:, 0] - 0.25, x[:, 1]
    r = torch.sqrt(u**2 + v**2)
    assert (u > -0.05).all()
    assert abs(r.mean() - 0.1) < 1e-3 and abs(r.std() - 0.01) < 1e-3
    theta = torch.tensor([0.3, -0.5])
    # the density integrates to 1 over x ...
    h = 0.001
    grid = torch.arange(-1.0, 1.0, h, dtype=torch.float64) + h / 2
    total = sum(
        float(_two_moons_log_density(theta, torch.cartesian_prod(xa, grid)).exp().sum()) * h * h
        for xa in grid.split(200)
    )
    assert abs(total - 1.0) < 0.01
    # ... and the task's log-likelihood equals its log at simulated and arbitrary points
    xs = torch.cat((task.simulator(theta[None].expand(20, -1), generator=gen(7)), x[:5].float()))
    got = torch.stack([task.log_likelihood(theta[None], xo)[0] for xo in xs]).double()
    expected = _two_moons_log_density(theta, xs)
    finite = torch.isfinite(expected)
    assert finite[:20].all()
    assert torch.allclose(got[finite], expected[finite], atol=1e-4)
    assert (got[~finite] == -math.inf).all()


def test_slcp_covariance_and_likelihood(tasks):
    task = tasks["slcp"]
    theta = torch.tensor([[0.7, -1.2, 1.1, -0.9, 0.6]])
    x = task.simulator(theta.expand(20000, -1), generator=gen(7)).reshape(-1, 2).double()
    s1, s2, rho = 1.1**2, 0.9**2, math.tanh(0.6)
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float64)
    assert torch.allclose(x.mean(0), theta[0, :2].double(), atol=0.03)
    assert torch.allclose(torch.cov(x.T), cov + 1e-6 * torch.eye(2), rtol=0.04, atol=0.01)
    xo = task.simulator(theta, generator=gen(8))[0]
    mvn = torch.distributions.MultivariateNormal(
        theta[0, :2].double(), cov + 1e-6 * torch.eye(2, dtype=torch.float64)
    )
    expected = mvn.log_prob(xo.reshape(4, 2).double()).sum()
    assert float(task.log_likelihood(theta, xo)[0]) == pytest.approx(float(expected), rel=1e-5)


def test_bernoulli_glm_design_and_sufficient_statistics(tasks):
    task = tasks["bernoulli_glm"]
    stim = glm.stimulus()
    assert stim[:3].tolist() == pytest.approx([0.49671415, -0.1382643, 0.64768854])
    design = glm.design_matrix()
    assert design.shape == (100, 10) and (design[:, 0] == 1).all()
    assert design[5, 3] == stim[3] and design[1, 2] == stim[0] and design[0, 2] == 0
    # the summary as sbibm computes it (count + conv1d) equals X^T y
    y = (torch.rand(100, generator=gen(9)) < 0.3).float()
    sta = torch.nn.functional.conv1d(y.reshape(1, 1, -1), stim.reshape(1, 1, -1), padding=8)
    sbibm_summary = torch.cat((y.sum().unsqueeze(0), sta.squeeze()[-9:]))
    assert torch.allclose(sbibm_summary, y @ design, atol=1e-5)
    # the prior precision as sbibm writes it
    cov = torch.tensor(task.prior.spec["covariance_matrix"], dtype=torch.float64)
    assert torch.allclose(torch.linalg.inv(cov), glm.prior_precision(), atol=1e-8)
    assert glm.prior_precision()[0, 0] == 0.5
    # x: spike counts in [0, 100]; the likelihood from the stats equals the Bernoulli one
    theta = task.prior.sample(4, gen(10))
    x = task.simulator(theta, generator=gen(11))
    assert ((x[:, 0] >= 0) & (x[:, 0] <= 100) & (x[:, 0] == x[:, 0].round())).all()
    xo = (y @ design).double()
    prob = torch.sigmoid(theta.double() @ design.double().T)
    direct = (y * torch.log(prob) + (1 - y) * torch.log1p(-prob)).sum(-1)
    assert torch.allclose(task.log_likelihood(theta, xo).double(), direct, rtol=1e-5)


# --- the ODE tasks -----------------------------------------------------------------------


def _scipy_sir(beta: float, gamma: float) -> np.ndarray:
    n = sir.POPULATION

    def f(t, u):
        s, i, _ = u
        return [-beta * s * i / n, beta * s * i / n - gamma * i, gamma * i]

    sol = solve_ivp(
        f, (0, 153), [n - 1, 1, 0], "DOP853", t_eval=sir.SAVE_DAYS, rtol=1e-11, atol=1e-12
    )
    return sol.y[1] / n


def _scipy_lv(a: float, b: float, c: float, d: float) -> np.ndarray:
    def f(t, u):
        return [a * u[0] - b * u[0] * u[1], -c * u[1] + d * u[0] * u[1]]

    sol = solve_ivp(
        f, (0, 18.9), [30.0, 1.0], "DOP853", t_eval=lv.SAVE_TIMES, rtol=1e-11, atol=1e-14
    )
    return sol.y.reshape(-1)


def test_sir_matches_scipy(tasks):
    theta = torch.cat((torch.tensor([[0.4, 0.125]]), tasks["sir"].prior.sample(5, gen(12))))
    ours = sir.infected_fraction(theta).numpy()
    for row, got in zip(theta.double().numpy(), ours, strict=True):
        ref = _scipy_sir(*row)
        assert np.max(np.abs(got - ref) / np.abs(ref)) < 1e-4


def test_lotka_volterra_matches_scipy(tasks):
    median = torch.exp(torch.tensor([[-0.125, -3.0, -0.125, -3.0]]))
    theta = torch.cat((median, tasks["lotka_volterra"].prior.sample(5, gen(13))))
    ours = lv.populations(theta).numpy()
    for row, got in zip(theta.double().numpy(), ours, strict=True):
        ref = _scipy_lv(*row)
        assert np.max(np.abs(got - ref) / np.abs(ref)) < 1e-4


def test_sir_noise_and_likelihood(tasks):
    task = tasks["sir"]
    theta = torch.tensor([[0.6, 0.15]])
    x = task.simulator(theta.expand(4000, -1), generator=gen(14))
    assert (x == x.round()).all() and (x >= 0).all() and (x <= 1000).all()
    p = sir.infected_fraction(theta)[0].float()
    assert torch.allclose(x.mean(0), 1000 * p, atol=2.0)
    xo = x[0]
    expected = stats.binom(1000, p.double().numpy()).logpmf(xo.numpy()).sum()
    assert float(task.log_likelihood(theta, xo)[0]) == pytest.approx(expected, rel=1e-5)


def test_lotka_volterra_noise_and_likelihood(tasks):
    task = tasks["lotka_volterra"]
    theta = torch.tensor([[0.7, 0.05, 0.9, 0.06]])
    x = task.simulator(theta.expand(4000, -1), generator=gen(15)).double()
    u = lv.populations(theta)[0]
    resid = torch.log(x / u)
    assert resid.mean(0).abs().max() < 0.01
    assert torch.allclose(resid.std(0), torch.full((20,), 0.1, dtype=torch.float64), rtol=0.06)
    xo = x[0]
    expected = stats.lognorm(s=0.1, scale=u.numpy()).logpdf(xo.numpy()).sum()
    assert float(task.log_likelihood(theta, xo)[0]) == pytest.approx(expected, rel=1e-5)


# --- reference posteriors ----------------------------------------------------------------


def _importance_mean_std(task: Task, x_o: torch.Tensor, n: int, seed: int):
    theta = task.prior.sample(n, gen(seed))
    log_w = task.log_likelihood(theta, x_o).double()
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    mean = (w[:, None] * theta.double()).sum(0)
    std = torch.sqrt((w[:, None] * (theta.double() - mean) ** 2).sum(0))
    return mean, std, float(1 / (w**2).sum())


def test_gaussian_linear_exact_reference(tasks):
    task = tasks["gaussian_linear"]
    xo = task.simulator(task.prior.sample(1, gen(16)), generator=gen(17))[0]
    samples = sample_reference_posterior(task, xo, 20000, seed=0)
    assert samples.shape == (20000, 10) and samples.dtype == torch.float32
    assert torch.allclose(samples.mean(0), xo / 2, atol=0.01)
    assert torch.allclose(samples.std(0), torch.full((10,), math.sqrt(0.05)), rtol=0.03)
    assert torch.equal(samples, sample_reference_posterior(task, xo, 20000, seed=0))


def test_gaussian_linear_mcmc_matches_analytic(tasks):
    task = tasks["gaussian_linear"]
    xo = task.simulator(task.prior.sample(1, gen(18)), generator=gen(19))[0]
    start = time.perf_counter()
    samples = sample_reference_posterior(task, xo, 5000, seed=1, force_mcmc=True, num_chains=400)
    assert time.perf_counter() - start < 10.0
    mean, std = gl.posterior_mean_std(xo)
    assert samples.shape == (5000, 10)
    assert (samples.double().mean(0) - mean).abs().max() < 0.05
    assert ((samples.double().std(0) / std) - 1).abs().max() < 0.10
    again = sample_reference_posterior(task, xo, 5000, seed=1, force_mcmc=True, num_chains=400)
    assert torch.equal(samples, again)


def test_mcmc_finds_both_two_moons_modes(tasks):
    task = tasks["two_moons"]
    xo = torch.tensor([0.0, 0.0])
    exact = sample_reference_posterior(task, xo, 4000, seed=2)
    mcmc, info = mcmc_posterior(task, xo, 4000, gen(3), num_chains=400)
    assert info["betas"][-1] == 1.0 and 0.05 < info["acceptance_rate"] < 0.9
    # the two crescents lie on either side of theta_0 = theta_1; each holds half the mass
    for s in (exact, mcmc):
        frac = (s[:, 0] > s[:, 1]).float().mean()
        assert abs(frac - 0.5) < 0.07
    assert torch.allclose(exact.mean(0), mcmc.mean(0), atol=0.06)
    assert torch.allclose(exact.std(0), mcmc.std(0), rtol=0.1)


@pytest.mark.parametrize("name", ["two_moons", "gaussian_mixture"])
def test_exact_reference_matches_importance_sampling(tasks, name):
    task = tasks[name]
    theta_true, x_o = benchmark_observations(task, num_observations=2, seed=123)
    for xo in x_o:
        ref = sample_reference_posterior(task, xo, 10000, seed=4).double()
        assert task.prior.in_support(ref.float()).all()
        mean, std, ess = _importance_mean_std(task, xo, 400_000, seed=5)
        assert ess > 200
        tol = 4 * std.max() * (1 / math.sqrt(ess) + 1 / math.sqrt(10000))
        assert (ref.mean(0) - mean).abs().max() < tol
        assert ((ref.std(0) / std) - 1).abs().max() < 0.1


def test_gaussian_linear_uniform_reference_is_truncated_normal(tasks):
    task = tasks["gaussian_linear_uniform"]
    xo = torch.tensor([0.9, -0.95, 1.3, 0.0, -1.2, 0.5, 0.2, -0.4, 1.0, -0.7])
    ref = sample_reference_posterior(task, xo, 20000, seed=6).double()
    assert (ref.abs() <= 1).all()
    sd = math.sqrt(0.1)
    a, b = (-1 - xo.double()) / sd, (1 - xo.double()) / sd
    tn = stats.truncnorm(a.numpy(), b.numpy(), loc=xo.double().numpy(), scale=sd)
    assert np.abs(ref.mean(0).numpy() - tn.mean()).max() < 0.01
    assert np.abs(ref.std(0).numpy() / tn.std() - 1).max() < 0.03


def test_reference_needs_a_likelihood(tasks):
    plain = Task(name="p", prior=tasks["slcp"].prior, simulator=lambda t: t, x_shape=(5,))
    with pytest.raises(UserError, match="likelihood"):
        sample_reference_posterior(plain, torch.zeros(5), 10, seed=0)


def test_mcmc_on_a_lognormal_prior_is_exact():
    # log theta ~ N(m, s^2) and x ~ N(log theta, r^2) per coordinate: the posterior of
    # log theta is N((m r^2 + x s^2) / (s^2 + r^2), s^2 r^2 / (s^2 + r^2)), checking the
    # sampler's log-space moves and their Jacobian.
    m, s, r = torch.tensor([-1.0, 0.5, 2.0]), torch.tensor([0.5, 1.0, 0.3]), 0.4
    prior = LogNormal(m.tolist(), s.tolist())

    def log_likelihood(theta: torch.Tensor, x_o: torch.Tensor) -> torch.Tensor:
        return (-0.5 * ((x_o - torch.log(theta)) / r) ** 2).sum(-1)

    task = Task(
        name="ln",
        prior=prior,
        simulator=lambda t: torch.log(t),
        x_shape=(3,),
        log_likelihood=log_likelihood,
    )
    xo = torch.tensor([0.0, 2.0, 1.0])
    samples = sample_reference_posterior(task, xo, 4000, seed=3, num_chains=400)
    assert (samples > 0).all()
    post_mean = (m * r**2 + xo * s**2) / (s**2 + r**2)
    post_std = torch.sqrt(s**2 * r**2 / (s**2 + r**2))
    logs = torch.log(samples)
    assert (logs.mean(0) - post_mean).abs().max() < 0.05
    assert ((logs.std(0) / post_std) - 1).abs().max() < 0.1


def test_mcmc_on_slcp_agrees_with_importance_sampling(tasks):
    task = tasks["slcp"]
    xo = task.simulator(torch.tensor([[0.5, -1.0, 1.5, -2.0, 0.3]]), generator=gen(21))[0]
    samples, info = mcmc_posterior(task, xo, 4000, gen(22), num_chains=400)
    assert info["betas"][-1] == 1.0
    # theta_0 and theta_1 (the mean) are unimodal; the four sign modes of theta_2,3
    # are all found, each with a quarter of the mass
    for sa in (1, -1):
        for sb in (1, -1):
            frac = ((sa * samples[:, 2] > 0) & (sb * samples[:, 3] > 0)).float().mean()
            assert abs(frac - 0.25) < 0.06
    mean, std, ess = _importance_mean_std(task, xo, 400_000, seed=23)
    assert ess > 100
    abs_mean = samples[:, :2].double().mean(0)
    assert (abs_mean - mean[:2]).abs().max() < 4 * std[:2].max() / math.sqrt(ess) + 0.02


# --- benchmark observations --------------------------------------------------------------


def test_benchmark_observations_are_deterministic(tasks):
    for name in ("two_moons", "lotka_volterra"):
        task = tasks[name]
        theta, x = benchmark_observations(task, num_observations=4)
        assert theta.shape == (4, task.dim_theta) and x.shape == (4, task.x_shape[0])
        assert theta.dtype == x.dtype == torch.float32 and torch.isfinite(x).all()
        theta2, x2 = benchmark_observations(task, num_observations=3)
        assert torch.equal(theta[:3], theta2) and torch.equal(x[:3], x2)
        theta3, _ = benchmark_observations(task, num_observations=3, seed=5)
        assert not torch.equal(theta2, theta3)
        assert task.prior.in_support(theta).all()


def test_benchmark_observations_with_a_generator_free_simulator(tasks):
    prior = tasks["gaussian_linear"].prior
    task = Task(name="g", prior=prior, simulator=lambda t: t + torch.randn(t.shape), x_shape=(10,))
    a = benchmark_observations(task, num_observations=2, seed=3)
    b = benchmark_observations(task, num_observations=2, seed=3)
    assert torch.equal(a[1], b[1])
    with pytest.raises(UserError):
        benchmark_observations(task, num_observations=0)


# --- the LogNormal prior -----------------------------------------------------------------


def test_lognormal_prior():
    assert "lognormal" in PRIOR_TYPES
    spec = {"type": "lognormal", "loc": [math.log(0.4), -3.0], "scale": [0.5, 0.2]}
    prior = prior_from_spec(spec)
    assert isinstance(prior, LogNormal) and prior.dim == 2 and not prior.bounded
    assert prior.spec == spec
    s = prior.sample(200_000, gen(20))
    assert s.dtype == torch.float32 and (s > 0).all()
    ref = torch.distributions.LogNormal(torch.tensor(spec["loc"]), torch.tensor(spec["scale"]))
    assert torch.allclose(prior.mean, ref.mean) and torch.allclose(prior.std, ref.stddev)
    assert torch.allclose(s.mean(0), prior.mean, rtol=0.01)
    assert torch.allclose(s.std(0), prior.std, rtol=0.02)
    theta = s[:100]
    assert torch.allclose(prior.log_prob(theta), ref.log_prob(theta).sum(-1), atol=1e-4)
    bad = torch.tensor([[0.0, 1.0], [-1.0, 1.0], [1.0, 1.0]])
    assert prior.in_support(bad).tolist() == [False, False, True]
    lp = prior.log_prob(bad)
    assert lp[0] == -math.inf and lp[1] == -math.inf and torch.isfinite(lp[2])
    assert prior.sample(3, gen(1)).shape == (3, 2)
    assert torch.equal(prior.sample(3, gen(1)), prior.sample(3, gen(1)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "lognormal", "loc": [0.0]}, "scale"),
        ({"type": "lognormal", "loc": [0.0], "scale": [0.0]}, "positive"),
        ({"type": "lognormal", "loc": [0.0, 1.0], "scale": [1.0]}, "entries"),
        ({"type": "lognormal", "loc": [0.0], "scale": [1.0], "low": [0]}, "unexpected"),
    ],
)
def test_lognormal_prior_errors(spec, message):
    with pytest.raises(UserError, match=message):
        prior_from_spec(spec)
