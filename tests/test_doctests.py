"""Every docstring example in ftmagic runs, and the core imports on a machine without a GPU, Ray or
IPython: both in a fresh process, so nothing this test session imported helps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ftmagic

PACKAGE = Path(ftmagic.__file__).parent
REPO = PACKAGE.parent.parent
ABSENT = ("ray", "IPython", "ipywidgets", "ipykernel", "anywidget", "bitsandbytes", "flash_attn")


def modules_with_examples() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if ">>>" in p.read_text(encoding="utf-8"))


@pytest.mark.timeout(240)
def test_docstring_examples_pass() -> None:
    """pytest's doctest collection over the modules that have examples; ``NUMBER`` lets a float
    example show only the digits that matter."""
    files = modules_with_examples()
    names = {f.relative_to(PACKAGE).as_posix() for f in files}
    assert {"data/plan.py", "train/checkpoint.py", "train/loop.py"} <= names
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--doctest-modules",
        "-o",
        "doctest_optionflags=NUMBER ELLIPSIS",
        *map(str, files),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed and int(passed.group(1)) >= 25, out.stdout[-2000:]


IMPORT_ALL = """
import importlib, importlib.abc, pkgutil, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, Absent())
import ftmagic

failed = []
for module in pkgutil.walk_packages(ftmagic.__path__, "ftmagic."):
    if module.name.startswith(("ftmagic.ui", "ftmagic.server_extension")):
        continue
    try:
        importlib.import_module(module.name)
    except Exception as err:
        failed.append(f"{module.name}: {type(err).__name__}: {err}")
import torch

print("cuda initialized:", torch.cuda.is_initialized())
print("\\n".join(failed))
"""


@pytest.mark.timeout(240)
def test_core_imports_without_gpu_ray_or_ipython() -> None:
    """Every module but the notebook UI imports with Ray, IPython and the GPU-only packages
    missing and no GPU visible (doctest collection imports them all)."""
    code = f"ABSENT = {ABSENT!r}\n{IMPORT_ALL}"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=200
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "cuda initialized: False", out.stdout
