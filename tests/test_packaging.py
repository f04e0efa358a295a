"""What ships: the wheel holds every module of the tree, the corpus and the compiled extension, and
the tests run the installed package, not the checkout's sources."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fastgpt

ROOT = Path(__file__).resolve().parents[1]


def source_modules() -> set[str]:
    """Every module of the tree as the wheel should hold it: fastgpt/ as is, kernels/ as fastgpt/kernels/."""
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "fastgpt").rglob("*.py")}
    modules |= {"fastgpt/kernels/" + str(p.relative_to(ROOT / "kernels")) for p in (ROOT / "kernels").rglob("*.py")}
    return modules


@pytest.mark.slow  # seconds after `pip install .` (the extension is built already), minutes from a clean tree
def test_the_wheel_holds_every_module_the_corpus_and_the_extension(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                             "--no-cache-dir", "-w", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = tmp_path.glob("fastgpt_char-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not source_modules() - names, f"modules missing from the wheel: {sorted(source_modules() - names)}"
    assert "fastgpt/data/tinyshakespeare.txt.gz" in names
    assert any(name.startswith("fastgpt/_C.") and name.endswith((".so", ".pyd")) for name in names), sorted(names)


@pytest.mark.skipif(os.environ.get("FASTGPT_TEST_INSTALLED") != "1",
                    reason="set FASTGPT_TEST_INSTALLED=1 to test a regular (non-editable) install, as CI does")
def test_the_tests_run_the_installed_package():
    package = Path(fastgpt.__file__).resolve().parent
    assert ROOT not in package.parents, f"fastgpt was imported from the checkout ({package}), not the install"
    assert (package / "kernels" / "attention.py").is_file()
    assert list(package.glob("_C.*"))
