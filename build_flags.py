"""The compiler flags of fastgpt._C, chosen by the compiler that builds it (setup.py's build_ext
hands over its own compiler object), never by the platform's name or by how torch was built.

- Optimisation: GCC and clang (LLVM's, Apple's) get -O3 -ffp-contract=fast (the AVX2 copy fuses
  multiply-adds, which ISO C++ mode forbids otherwise); MSVC gets /O2 /fp:contract.
- OpenMP: torch's at::parallel_for runs its inline loop in parallel only when the extension is
  compiled and linked with OpenMP too. Each compiler's way is tried on a tiny OpenMP program first:
  -fopenmp (GCC, LLVM clang); -Xpreprocessor -fopenmp against the omp.h and libomp that torch's
  macOS wheels bundle (Apple clang, as PyTorch's inductor C++ builder does: never a second OpenMP
  runtime); /openmp (MSVC). Where it fails, or FASTGPT_OPENMP=0, or torch itself does not use
  OpenMP, the kernels are built serial, with a one-line warning; `fastgpt info` says so.
"""
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

OPENMP_PROBE = "#include <omp.h>\nint fastgpt_threads(void) { return omp_get_max_threads(); }\n"
# (compile flags, link flags) for OpenMP, per compiler; torch_dir fills in Apple clang's paths.
OPENMP_FLAGS = {
    "gcc": (["-fopenmp"], ["-fopenmp"]),
    "clang": (["-fopenmp"], ["-fopenmp"]),
    "apple-clang": (["-Xpreprocessor", "-fopenmp", "-I{torch_dir}/include"], ["-L{torch_dir}/lib", "-lomp"]),
    "msvc": (["/openmp"], []),
}


@dataclass
class Flags:
    compiler: str  # gcc, clang, apple-clang, msvc, or unknown
    compile: list[str]
    link: list[str] = field(default_factory=list)
    openmp: bool = False
    warning: Optional[str] = None  # why the kernels are serial, when they are not by choice


def compiler_kind(compiler_type: str, version_text: str) -> str:
    """What compiler setuptools' compiler object is: its type, and `<cc> --version` on Unix."""
    if compiler_type == "msvc":
        return "msvc"
    if "Apple clang" in version_text:
        return "apple-clang"
    if "clang" in version_text:
        return "clang"
    if "Free Software Foundation" in version_text or "gcc" in version_text.lower():
        return "gcc"
    return "unknown"


def optimisation(kind: str, debug: bool) -> list[str]:
    if kind == "msvc":
        return ["/Od", "/Zi"] if debug else ["/O2", "/fp:contract"]
    return ["-O0", "-g"] if debug else ["-O3", "-ffp-contract=fast"]


def choose(kind: str, torch_dir: str, torch_has_openmp: bool, env: dict,
           probe: Callable[[list[str], list[str]], Optional[str]]) -> Flags:
    """The flags for compiler `kind`. `probe(compile, link)` builds the OpenMP test program with
    them and returns None, or the compiler's first error line."""
    flags = Flags(kind, optimisation(kind, env.get("FASTGPT_DEBUG") == "1"))
    if env.get("FASTGPT_OPENMP") == "0" or not torch_has_openmp:
        return flags  # serial on purpose, or torch runs parallel_for on its own thread pool
    compile_flags, link_flags = (
        [f.format(torch_dir=torch_dir) for f in flags_of] for flags_of in OPENMP_FLAGS.get(kind, OPENMP_FLAGS["gcc"]))
    error = probe(compile_flags, link_flags)
    if error is not None:
        flags.warning = (f"fastgpt: building the C++ kernels without OpenMP, so they run on one core: "
                         f"the {kind} compiler could not build an OpenMP program with "
                         f"{' '.join(compile_flags)} ({error}); install its OpenMP runtime or build "
                         f"with GCC (CC=gcc CXX=g++), or set FASTGPT_OPENMP=0 to silence this")
        return flags
    flags.compile += compile_flags
    flags.link += link_flags
    flags.openmp = True
    return flags


def version_text(executable: str) -> str:
    try:
        return subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def probe_unix(cxx: str) -> Callable[[list[str], list[str]], Optional[str]]:
    """A probe that builds OPENMP_PROBE into a shared object with `cxx`, as the extension is."""
    def probe(compile_flags: list[str], link_flags: list[str]) -> Optional[str]:
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "openmp_probe.cpp"
            source.write_text(OPENMP_PROBE)
            command = [cxx, *compile_flags, "-shared", "-fPIC", str(source), "-o",
                       str(Path(scratch) / "probe.so"), *link_flags]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as e:
                return str(e)
            errors = re.findall(r"(?:fatal )?error: .*", result.stderr)  # without the scratch path
            return None if result.returncode == 0 else (errors or ["failed"])[0].strip()
    return probe


def probe_msvc(compiler) -> Callable[[list[str], list[str]], Optional[str]]:
    """A probe that compiles and links OPENMP_PROBE with setuptools' MSVC compiler object."""
    from distutils.errors import CompileError, LinkError  # setuptools' vendored distutils

    def probe(compile_flags: list[str], link_flags: list[str]) -> Optional[str]:
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "openmp_probe.cpp"
            source.write_text(OPENMP_PROBE)
            try:
                objects = compiler.compile([str(source)], output_dir=scratch, extra_postargs=compile_flags)
                compiler.link_shared_object(objects, str(Path(scratch) / "probe.dll"), extra_postargs=link_flags)
            except (CompileError, LinkError) as e:
                return str(e).strip() or type(e).__name__
        return None
    return probe


def for_compiler(compiler, cxx: str, torch_dir: str, torch_has_openmp: bool) -> Flags:
    """The flags for build_ext's `compiler` object; on Unix torch's ninja build compiles with `cxx`
    (torch.utils.cpp_extension.get_cxx_compiler(): $CXX or c++), which is what is probed."""
    if compiler.compiler_type == "msvc":
        return choose("msvc", torch_dir, torch_has_openmp, dict(os.environ), probe_msvc(compiler))
    kind = compiler_kind(compiler.compiler_type, version_text(cxx))
    return choose(kind, torch_dir, torch_has_openmp, dict(os.environ), probe_unix(cxx))
