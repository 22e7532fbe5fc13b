"""Screenshots of the dashboard's pages for the README, into docs/img/.

Runs the browser test (tests/test_dashboard.py: train -> diagnose -> sample on a small
two_moons model in Debian's Chromium) with SBI_SERVICE_SCREENSHOTS pointing here, and
prints the files it wrote.

    .venv/bin/python benchmarks/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SBI_SERVICE_SCREENSHOTS": str(OUT)}
    test = "tests/test_dashboard.py::test_click_through_train_diagnose_sample"
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", test], cwd=ROOT, env=env)
    for path in sorted(OUT.glob("dashboard-*.png")):
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size} bytes")
    return code


if __name__ == "__main__":
    sys.exit(main())
