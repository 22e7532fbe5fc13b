"""Diagnostic reports: ``report.json``, PNG plots and a self-contained ``report.html``.

The report dict (built by ``sbi_service.workflows.diagnose``) holds, among others::

    {"passed": bool,
     "checks": [{"diagnostic", "name", "statistic", "threshold", "comparison", "passed"}, ...],
     "diagnostics": {"tarp": DiagnosticResult.to_dict(), "sbc": ..., ...}}

Plots are drawn from the dict's values (so a report can be re-plotted from its JSON);
the HTML embeds them as base64 PNGs and needs no other file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from sbi_service.diagnostics import plots

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def make_plots(
    report: dict[str, Any], folder: Path, pair_samples: np.ndarray | None = None
) -> dict[str, str]:
    """Write the PNGs for the diagnostics present; returns {plot name: file name}.

    ``pair_samples`` (N, d) are posterior draws for one test observation (pair plot).
    """
    folder = Path(folder)
    diags = report.get("diagnostics", {})
    made: dict[str, str] = {}
    if "tarp" in diags:
        v = diags["tarp"]["values"]
        plots.ecp_plot(
            v["alpha"], v["ecp"], folder / "tarp_ecp.png", v["ecp_lower"], v["ecp_upper"]
        )
        made["TARP expected coverage"] = "tarp_ecp.png"
    if "sbc" in diags:
        v = diags["sbc"]["values"]
        plots.sbc_histograms(
            v["rank_histograms"], v["expected_count_per_bin"], folder / "sbc_ranks.png"
        )
        made["SBC rank histograms"] = "sbc_ranks.png"
    if "coverage" in diags:
        v = diags["coverage"]["values"]
        plots.ecp_plot(
            v["alpha"],
            v["coverage"],
            folder / "hpd_coverage.png",
            title="Expected HPD coverage",
            ylabel="empirical coverage",
        )
        made["Expected coverage (HPD regions)"] = "hpd_coverage.png"
    if "robustness" in diags:
        v = diags["robustness"]["values"]
        curves = {k: v[k]["mean_kl"] for k in ("l2", "linf") if k in v}
        plots.robustness_curve(v["epsilons"], curves, folder / "robustness.png")
        made["Adversarial robustness"] = "robustness.png"
    if pair_samples is not None:
        plots.pair_plot(pair_samples, folder / "posterior_pairs.png", title="one test posterior")
        made["Posterior pair plot (one test observation)"] = "posterior_pairs.png"
    return made


def write_report(
    report: dict[str, Any], folder: Path, pair_samples: np.ndarray | None = None
) -> dict[str, Any]:
    """Write plots, ``report.json`` and ``report.html`` into ``folder``; returns the report
    with ``report["plots"]`` set to {plot name: file name}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {**report, "plots": make_plots(report, folder, pair_samples)}
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2))
    (folder / REPORT_HTML).write_text(render_html(report, folder))
    return report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(report: dict[str, Any], folder: Path) -> str:
    """A standalone HTML page: verdict, checks table, contraction, embedded plots."""
    verdict = "PASSED" if report.get("passed") else "FAILED"
    color = "#1a7f37" if report.get("passed") else "#cf222e"
    rows = "".join(
        f"<tr><td>{_cell(c['diagnostic'])}</td><td>{_cell(c['name'])}</td>"
        f"<td>{_cell(c['statistic'])}</td><td>{_cell(c['comparison'])} {_cell(c['threshold'])}</td>"
        f"<td style='color:{'#1a7f37' if c['passed'] else '#cf222e'}'>"
        f"{'pass' if c['passed'] else 'FAIL'}</td></tr>"
        for c in report.get("checks", [])
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sbi-service diagnostics: {_cell(report.get('model'))}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{_cell(report.get('model'))} v{_cell(report.get('version'))}: "
        f"<span style='color:{color}'>{verdict}</span></h1>",
        f"<p>{_cell(report.get('num_tests'))} test pairs from {_cell(report.get('test_data'))}, "
        f"{_cell(report.get('num_posterior_samples'))} posterior samples each, "
        f"seed {_cell(report.get('seed'))}.</p>",
        "<h2>Checks</h2><table><tr><th>diagnostic</th><th>check</th><th>statistic</th>"
        f"<th>threshold</th><th>verdict</th></tr>{rows}</table>",
    ]
    contraction = report.get("diagnostics", {}).get("contraction")
    if contraction is not None:
        per = contraction["values"]["per_parameter"]
        cells = "".join(f"<td>{_cell(v)}</td>" for v in per)
        heads = "".join(f"<th>θ{i + 1}</th>" for i in range(len(per)))
        parts.append(
            "<h2>Posterior contraction</h2><p>1 - posterior variance / prior variance "
            "(0: the posterior is as wide as the prior, which passes TARP and SBC but has "
            f"learned nothing).</p><table><tr>{heads}</tr><tr>{cells}</tr></table>"
        )
    for title, name in report.get("plots", {}).items():
        data = base64.b64encode((Path(folder) / name).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def junit_xml(report: dict[str, Any]) -> str:
    """The report's checks as a JUnit XML test suite (one test case per check)."""
    checks = report.get("checks", [])
    suite = ET.Element(
        "testsuite",
        name=f"sbi-service diagnose {report.get('model')} v{report.get('version')}",
        tests=str(len(checks)),
        failures=str(sum(not c["passed"] for c in checks)),
        errors="0",
        time=str(report.get("seconds", 0)),
    )
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=c["diagnostic"], name=c["name"])
        text = f"statistic {c['statistic']:.6g} {c['comparison']} threshold {c['threshold']:.6g}"
        if c["passed"]:
            ET.SubElement(case, "system-out").text = text
        else:
            ET.SubElement(case, "failure", message=f"{c['diagnostic']}.{c['name']}: {text} fails")
    for s in report.get("skipped", []):
        case = ET.SubElement(suite, "testcase", classname=s["diagnostic"], name="skipped")
        ET.SubElement(case, "skipped", message=s["reason"])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def junit_error_xml(message: str) -> str:
    """A JUnit suite with one errored test case: the gate itself could not run."""
    suite = ET.Element(
        "testsuite", name="sbi-service diagnose", tests="1", failures="0", errors="1"
    )
    case = ET.SubElement(suite, "testcase", classname="gate", name="run")
    ET.SubElement(case, "error", message=message)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
