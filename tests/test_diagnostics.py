"""Diagnostics on analytic posteriors: calibrated ones pass, mis-calibrated ones fail.

Model: theta ~ N(0, I_2), x = theta + N(0, I_2), so p(theta | x) = N(x / 2, I / 2).
Exact posterior samples pass; samples shrunk towards their mean (overconfident),
stretched away from it (underconfident) or shifted (biased) fail TARP and SBC.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sbi_service.diagnostics.base import Check, DiagnosticResult
from sbi_service.diagnostics.contraction import contraction
from sbi_service.diagnostics.coverage import expected_coverage
from sbi_service.diagnostics.ppc import posterior_predictive_check
from sbi_service.diagnostics.report import junit_xml, write_report
from sbi_service.diagnostics.sbc import sbc, sbc_ranks
from sbi_service.diagnostics.tarp import ecp_curve, tarp, tarp_coverage_values

torch.set_num_threads(1)
N_TESTS, N_SAMPLES, DIM = 300, 500, 2
POST_STD = math.sqrt(0.5)


def gaussian_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(N_TESTS, DIM, generator=g)
    x = theta + torch.randn(N_TESTS, DIM, generator=g)
    eps = torch.randn(N_TESTS, N_SAMPLES, DIM, generator=g)
    return theta, x, x[:, None, :] / 2, eps


def variants(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    theta, x, mean, eps = gaussian_case(seed)
    return {
        "exact": (theta, x, mean + POST_STD * eps),
        "overconfident": (theta, x, mean + 0.5 * POST_STD * eps),
        "underconfident": (theta, x, mean + 2.0 * POST_STD * eps),
        "biased": (theta, x, mean + POST_STD * (eps + 1.0)),
    }


def gaussian_log_prob(theta: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    return (-0.5 * ((theta - mean) / std) ** 2).sum(-1) - DIM * math.log(std)


@pytest.mark.parametrize("case", ["exact", "overconfident", "underconfident", "biased"])
def test_tarp_and_sbc_pass_only_the_exact_posterior(case: str) -> None:
    theta, _, samples = variants()[case]
    g = torch.Generator().manual_seed(1)
    t, s = tarp(samples, theta, generator=g), sbc(samples, theta, generator=g)
    expected = case == "exact"
    assert t.passed is expected, t.to_dict()["checks"]
    assert s.passed is expected, s.to_dict()["checks"]


def test_atc_sign_tells_over_from_underconfidence() -> None:
    v = variants()
    atc = {
        k: tarp(s, t, generator=torch.Generator().manual_seed(2)).values["atc"]
        for k, (t, _, s) in v.items()
    }
    assert atc["overconfident"] < -0.03 and atc["underconfident"] > 0.03
    assert abs(atc["exact"]) < 0.03


def test_tarp_ecp_agrees_with_the_tarp_package() -> None:
    """Same samples, same (normalized) references: our ECP at tarp's alpha grid within 0.01."""
    from tarp import get_tarp_coverage

    theta, _, samples = variants()["exact"]
    g = torch.Generator().manual_seed(3)
    references = theta[torch.randperm(N_TESTS, generator=g)] + 0.3 * torch.randn(
        N_TESTS, DIM, generator=g
    )
    loc, scale = theta.mean(0), theta.std(0)
    z = lambda t: ((t - loc) / scale).double().numpy()  # noqa: E731
    ecp_pkg, alpha_pkg = get_tarp_coverage(
        np.moveaxis(z(samples), 1, 0), z(theta), references=z(references), norm=False
    )
    f = tarp_coverage_values(samples, theta, references)
    ours = np.array([(f < a).double().mean().item() for a in alpha_pkg])
    ours[-1] = 1.0  # numpy's last histogram bin is closed on the right
    assert np.abs(ours - ecp_pkg).max() <= 0.01
    # the binned curve on (0, 1) matches the exact CDF at its edges (up to ties at edges)
    alpha, ecp = ecp_curve(f, 50)
    exact = torch.stack([(f < a).float().mean() for a in alpha[:-1]])
    assert torch.allclose(ecp[:-1], exact, atol=0.01) and ecp[-1] == 1


def test_tarp_uses_no_global_rng_and_is_seeded() -> None:
    theta, _, samples = variants()["exact"]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tarp(samples, theta, generator=torch.Generator().manual_seed(5)).to_dict()
    after = torch.rand(1)
    b = tarp(samples, theta, generator=torch.Generator().manual_seed(5)).to_dict()
    assert torch.equal(before, after)  # the global stream was not consumed or reseeded
    assert a == b
    lo, hi = np.array(a["values"]["ecp_lower"]), np.array(a["values"]["ecp_upper"])
    assert (lo <= np.array(a["values"]["ecp"]) + 1e-6).all() and (hi >= lo).all()


def test_sbc_ranks_and_bonferroni() -> None:
    theta = torch.zeros(3, 2)
    samples = torch.tensor([[-1.0, 1.0], [1.0, 2.0], [-2.0, -1.0]])[:, :, None].expand(3, 2, 2)
    assert sbc_ranks(samples, theta)[:, 0].tolist() == [1.0, 0.0, 2.0]
    theta, _, s = variants()["exact"]
    r = sbc(s, theta)
    assert r.values["ks_pvalue_bonferroni"] == pytest.approx(
        min(1.0, DIM * min(r.values["ks_pvalues"]))
    )


def test_expected_hpd_coverage() -> None:
    for case, expected in [("exact", True), ("overconfident", False), ("underconfident", False)]:
        theta, x, samples = variants()[case]
        std = {"exact": 1.0, "overconfident": 0.5, "underconfident": 2.0}[case] * POST_STD
        mean = x[:, None, :] / 2
        r = expected_coverage(
            samples,
            theta,
            gaussian_log_prob(samples, mean, std),
            gaussian_log_prob(theta, x / 2, std),
        )
        assert r.passed is expected, (case, r.values["ks_pvalue"])


def test_contraction_and_ppc() -> None:
    theta, x, samples = variants()["exact"]
    c = contraction(samples, theta, torch.ones(DIM), min_contraction=0.3)
    assert c.values["per_parameter"].sub(0.5).abs().max() < 0.05 and c.passed
    prior_like = torch.randn(N_TESTS, N_SAMPLES, DIM)
    assert not contraction(prior_like, theta, torch.ones(DIM), min_contraction=0.3).passed

    def simulator(t: torch.Tensor) -> torch.Tensor:
        return t + torch.randn(t.shape, generator=torch.Generator().manual_seed(9))

    assert posterior_predictive_check(samples, theta, x, simulator).passed
    far = samples + 5.0
    assert not posterior_predictive_check(far, theta, x, simulator).passed


def test_result_json_report_and_junit(tmp_path) -> None:
    theta, _, samples = variants()["overconfident"]
    results = [tarp(samples, theta), sbc(samples, theta)]
    diagnostics = {r.name: r.to_dict() for r in results}
    checks = [{"diagnostic": r.name, **c} for r in results for c in diagnostics[r.name]["checks"]]
    report = {
        "model": "m",
        "version": 1,
        "passed": False,
        "checks": checks,
        "diagnostics": diagnostics,
        "skipped": [],
    }
    written = write_report(report, tmp_path, samples[0].numpy())
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["diagnostics"]["tarp"]["checks"][0]["name"] == "abs_atc"
    assert set(written["plots"].values()) == {
        "tarp_ecp.png",
        "sbc_ranks.png",
        "posterior_pairs.png",
    }
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "FAILED" in page
    xml = junit_xml(report)
    assert xml.count("<testcase") == 3 and xml.count("<failure") == 3


def test_check_verdicts() -> None:
    assert Check("a", 0.1, 0.2, "<=").passed and not Check("a", 0.3, 0.2, "<=").passed
    assert not Check("a", float("nan"), 0.2, "<=").passed
    assert DiagnosticResult("x").passed and json.dumps(DiagnosticResult("x").to_dict())
