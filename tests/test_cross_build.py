"""fastgpt._C's sources compile for aarch64 with only the portable copy of the kernels.

Each csrc/*.cpp goes through the cross compiler aarch64-linux-gnu-g++ (-fsyntax-only, against this
torch's headers, with setup.py's flags); in its preprocessed text, the lines that come from csrc/
reference no x86 intrinsic or CPU probe, and the kernel headers are compiled once, as the `baseline`
copy (isa_copies.h and isa.h keep the AVX2 and AVX-512 copies behind __x86_64__). Skipped where the
cross compiler is not installed (`apt-get install g++-aarch64-linux-gnu`). bench/aarch64_qemu.sh
builds the extension for aarch64 and runs it under QEMU.
"""
import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

CXX = "aarch64-linux-gnu-g++"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
# module.cpp first: torch/extension.h makes it the longest to compile, so the cores finish together.
SOURCES = sorted(CSRC.glob("*.cpp"), key=lambda source: source.name != "module.cpp")
# torch's -std and defines (BuildExtension), setup.py's -fopenmp; headers of this torch and Python.
FLAGS = ["-std=c++20", "-fopenmp", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"] + \
        [f"-I{path}" for path in include_paths() + [sysconfig.get_paths()["include"]]]
X86 = re.compile(r"\b(_mm\w*|__m(64|128|256|512)\w*|__builtin_ia32_\w+|__builtin_cpu_supports)\b")
ISA_COPY = re.compile(r"\bnamespace (baseline|avx2|avx512) \{")


def csrc_lines(preprocessed: str) -> list[str]:
    """The lines of a preprocessed file that come from csrc/ (by its `# line "file"` markers)."""
    lines, ours = [], False
    for line in preprocessed.splitlines():
        if line.startswith("# "):
            ours = f'"{CSRC}/' in line
        elif ours:
            lines.append(line)
    return lines


def syntax_check(source: Path, out_dir: Path) -> subprocess.CompletedProcess:
    """Compiles `source` for aarch64 up to its syntax and types, keeping the preprocessed text."""
    return subprocess.run([CXX, "-fsyntax-only", "-save-temps=obj", "-o", str(out_dir / source.stem), *FLAGS,
                           str(source)], capture_output=True, text=True)


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no {CXX} on PATH (apt-get install g++-aarch64-linux-gnu)")
def test_every_source_compiles_for_aarch64_with_only_the_portable_kernels(tmp_path):
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        results = list(pool.map(lambda source: syntax_check(source, tmp_path), SOURCES))
    for source, result in zip(SOURCES, results):
        assert result.returncode == 0, f"{source.name} does not compile for aarch64:\n{result.stderr[-3000:]}"
        lines = csrc_lines((tmp_path / f"{source.stem}.ii").read_text())
        assert lines, f"{source.name}: no line of csrc/ found in the preprocessed text"
        x86 = sorted({match[0] for line in lines for match in X86.findall(line)})
        assert not x86, f"{source.name} references x86 intrinsics on aarch64: {x86}"
        copies = {match for line in lines for match in ISA_COPY.findall(line)}
        expected = {"baseline"} if '#include "isa_copies.h"' in source.read_text() else set()
        assert copies == expected, f"{source.name}: instruction-set copies {copies}, expected {expected}"
