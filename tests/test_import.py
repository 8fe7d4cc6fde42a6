"""`import ftmagic` and `%load_ext ftmagic` stay cheap: no heavy library is imported."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "mlflow", "ipywidgets", "pandas")


def _imported_modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_import_ftmagic_pulls_no_heavy_module() -> None:
    names = _imported_modules("import ftmagic")
    assert "ftmagic" in names
    assert not {n for n in names if n.split(".")[0] in (*HEAVY, "IPython")}


def test_load_ext_pulls_no_heavy_module() -> None:
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "import sys; before = set(sys.modules)\n"
        "shell.run_line_magic('load_ext', 'ftmagic')\n"
        "assert 'finetune' in shell.magics_manager.magics['cell']\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        f"bad = new & set({HEAVY!r})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_api_is_lazy_and_complete() -> None:
    import ftmagic

    for name in (
        "get_models",
        "validate",
        "preview",
        "create",
        "get",
        "list",
        "cancel",
        "delete",
        "get_events",
        "get_checkpoints",
        "resume",
        "panel",
    ):
        assert callable(getattr(ftmagic, name)), name
    assert ftmagic.RunConfig().training_duration == "1ep"
