"""build_flags.py: the extension's flags follow the compiler in use. Compilers this machine lacks
(Apple clang, MSVC) are faked by their `--version` text and a probe; GCC and, where installed,
clang are probed for real."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import build_flags
from clitools import needs_cpp
from fastgpt.ops import cpu

ROOT = Path(__file__).resolve().parents[1]

VERSIONS = {
    "gcc": "g++ (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.",
    "clang": "Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu",
    "apple-clang": "Apple clang version 15.0.0 (clang-1500.3.9.4)\nTarget: arm64-apple-darwin23.4.0",
}


def probe_returning(error):
    calls = []

    def probe(compile_flags, link_flags):
        calls.append((compile_flags, link_flags))
        return error
    probe.calls = calls
    return probe


@pytest.mark.parametrize("kind", list(VERSIONS))
def test_the_version_text_names_the_compiler(kind):
    assert build_flags.compiler_kind("unix", VERSIONS[kind]) == kind
    assert build_flags.compiler_kind("msvc", "") == "msvc"


@pytest.mark.parametrize("kind, compile_flags, link_flags", [
    ("gcc", ["-O3", "-ffp-contract=fast", "-fopenmp"], ["-fopenmp"]),
    ("clang", ["-O3", "-ffp-contract=fast", "-fopenmp"], ["-fopenmp"]),
    # torch's own omp.h and libomp (the macOS wheels bundle them), never a second OpenMP runtime
    ("apple-clang", ["-O3", "-ffp-contract=fast", "-Xpreprocessor", "-fopenmp", "-I/site/torch/include"],
     ["-L/site/torch/lib", "-lomp"]),
    ("msvc", ["/O2", "/fp:contract", "/openmp"], []),  # MSVC's own flags: no GCC flag reaches it
])
def test_openmp_flags_by_compiler(kind, compile_flags, link_flags):
    probe = probe_returning(None)
    flags = build_flags.choose(kind, "/site/torch", True, {}, probe)
    assert (flags.compile, flags.link, flags.openmp, flags.warning) == (compile_flags, link_flags, True, None)
    assert probe.calls == [(compile_flags[2:], link_flags)]  # the probe is built with them first


@pytest.mark.parametrize("kind", ["gcc", "clang", "apple-clang", "msvc"])
def test_a_failed_probe_builds_serial_kernels_with_one_warning(kind):
    flags = build_flags.choose(kind, "/t", True, {}, probe_returning("fatal error: 'omp.h' file not found"))
    assert not flags.openmp and "openmp" not in " ".join(flags.compile + flags.link).lower()
    assert "without OpenMP" in flags.warning and "'omp.h' file not found" in flags.warning
    assert "\n" not in flags.warning


@pytest.mark.parametrize("env, torch_has_openmp", [({"FASTGPT_OPENMP": "0"}, True), ({}, False)])
def test_openmp_off_on_purpose_or_when_torch_does_not_use_it(env, torch_has_openmp):
    probe = probe_returning(None)
    flags = build_flags.choose("gcc", "/t", torch_has_openmp, env, probe)
    assert (flags.openmp, flags.warning, probe.calls) == (False, None, [])


def test_debug_builds():
    assert build_flags.choose("gcc", "/t", False, {"FASTGPT_DEBUG": "1"}, probe_returning(None)).compile == ["-O0", "-g"]
    assert build_flags.choose("msvc", "/t", False, {"FASTGPT_DEBUG": "1"}, probe_returning(None)).compile == ["/Od", "/Zi"]


def test_gcc_builds_openmp_programs_here():
    assert build_flags.probe_unix("g++")(["-fopenmp"], ["-fopenmp"]) is None


@pytest.mark.skipif(shutil.which("clang++") is None, reason="no clang++ on PATH (apt-get install clang)")
def test_clang_without_libomp_is_found_out_by_the_probe():
    """Debian's clang has no omp.h unless libomp-dev is installed: the probe says so in one line."""
    kind = build_flags.compiler_kind("unix", build_flags.version_text("clang++"))
    error = build_flags.probe_unix("clang++")(["-fopenmp"], ["-fopenmp"])
    assert kind == "clang"
    assert error is None or error.startswith(("fatal error", "error")), error


@pytest.mark.parametrize("built, summary", [
    ({"compiler": "GCC 12.2.0", "openmp": True, "copies": ["baseline", "avx2+fma", "avx512"]},
     "OpenMP, avx2+fma in use of baseline, avx2+fma, avx512; built by GCC 12.2.0"),
    ({"compiler": "clang 14.0.6 ", "openmp": False, "copies": ["baseline", "avx2+fma", "avx512"]},
     "serial (built without OpenMP), avx2+fma in use of baseline, avx2+fma, avx512; built by clang 14.0.6"),
    ({"compiler": "MSVC 194", "openmp": True, "copies": ["baseline"]},
     "OpenMP, avx2+fma in use of baseline (the AVX2 and AVX-512 copies are compiled by GCC or clang on x86-64); built by MSVC 194"),
])
def test_info_names_the_build_and_the_copy(monkeypatch, built, summary):
    class Extension:
        build_info = staticmethod(lambda: built)
        instruction_set = staticmethod(lambda: "avx2+fma")
    monkeypatch.setattr(cpu, "extension", Extension)
    monkeypatch.setattr(cpu, "missing", None)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert cpu.build_summary() == summary


@needs_cpp
def test_info_says_how_the_kernels_were_built():
    summary = cpu.build_summary()
    assert summary.startswith(("OpenMP", "serial (built without OpenMP)")), summary
    assert f"{cpu.instruction_set()} in use" in summary and "built by" in summary


def test_a_compiler_that_cannot_build_the_extension_still_installs(tmp_path):
    """No usable compiler (none at all, or MSVC, which lacks the GCC vector extensions): the wheel
    is built without fastgpt._C, with one warning, and the PyTorch reference runs."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "build_flags.py", "pyproject.toml", "README.md", "fastgpt", "kernels", "csrc"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'this compiler builds nothing' >&2\nexit 1\n")
    broken.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-v",
                             "-w", str(tmp_path / "dist"), str(source)], env={**os.environ, "CXX": str(broken)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "warning: fastgpt: the C++ extension was not built" in result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("fastgpt_char-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastgpt/data/text.py" in names and not any(name.startswith("fastgpt/_C") for name in names)
