"""The JupyterLab extension's TypeScript unit tests (jest), run from pytest.

They cover the `%%finetune` highlighting switch and field completion (pure functions and the
CodeMirror extensions on a real EditorState), the runs sidebar's data model and the cells the
commands insert.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

LAB = Path(__file__).resolve().parents[1] / "labextension"
JLPM = Path(sys.executable).parent / "jlpm"
MIN_TESTS = 64


def test_jest_unit_tests_pass() -> None:
    if not (LAB / "node_modules" / ".bin" / "jest").exists():
        # `pip install -e .` installs them; a wheel install does not keep node_modules.
        subprocess.run([str(JLPM), "install"], cwd=LAB, check=True, timeout=900)
    out = subprocess.run(
        [str(JLPM), "jest", "--ci"], cwd=LAB, capture_output=True, text=True, timeout=600
    )
    report = out.stderr + out.stdout
    assert out.returncode == 0, report[-4000:]
    suites = re.search(r"Test Suites:\s+(\d+) passed, (\d+) total", report)
    tests = re.search(r"Tests:\s+(\d+) passed, (\d+) total", report)
    assert suites and tests, report[-2000:]
    assert suites.group(1) == suites.group(2) == "6"
    assert tests.group(1) == tests.group(2)
    assert int(tests.group(1)) >= MIN_TESTS
