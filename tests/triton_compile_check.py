"""Compile every Triton kernel for a T4 (sm_75), an A100 (sm_80) and an H100 (sm_90) with Triton's
own compiler and ptxas, no GPU needed: catches what the interpreter lets through (types,
constexprs, dot shapes, layouts, instructions a generation lacks). Run as a script with
TRITON_INTERPRET unset (tests/test_attention.py does); prints one line per compile and exits
non-zero naming the target, kernel and dtype of the first that fails.

What is compiled, for each target and each dtype it has (float16 and float32 on sm_75, which has
no bfloat16; bfloat16, float16 and float32 on sm_80 and sm_90), fp32 with IEEE dots as the
launchers pass it:
- forward, dK/dV and dQ (the backward kernel with KEY_TILES on and off) at the first (largest) tile
  config of their autotuning list with dropout on and head size 64, and at the last (smallest) with
  dropout off and head size 128; fp32 takes the largest tiles on sm_80 only and the smallest (with
  dropout, head size 64) elsewhere: its dots are FMA loops, the same code on every target, and the
  slowest compiles here (10-17 s each);
- delta at head sizes 64 and 128, dropout_add with and without a residual;
- the keep-mask kernel once per target (its output is bytes, whatever the dtype).
The full product (6 configs × dropout on/off × 2 head sizes × 8 target-dtypes, 3 kernels) is
~580 compiles, over an hour on 2 cores; these 83 cover every target, dtype, kernel, dropout
setting, head size and both ends of each tile list (tensor-core dots at both ends on every
target) in about 3 minutes of CPU, spread over the cores. The configs in between differ from
these only in tile sizes and warps.

Each line shows the shared memory a compile needs. The largest tiles need more than a T4 has: on
a GPU the autotuner skips a config that does not fit (OutOfResources), so only the smallest
config, which the pruning keeps for every length, must fit every target; this script fails if it
does not."""
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "the kernels must be decorated for a GPU"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastgpt.kernels import dropout_add  # noqa: E402
from fastgpt.kernels import attention as kernels  # noqa: E402

# name: (capability, dtypes, the most shared memory a block may have (opt-in), in bytes)
TARGETS = {
    "sm_75": (75, ("fp16", "fp32"), 64 * 1024),
    "sm_80": (80, ("bf16", "fp16", "fp32"), 163 * 1024),
    "sm_90": (90, ("bf16", "fp16", "fp32"), 227 * 1024),
}
KERNELS = {"_forward_kernel": kernels._forward_kernel, "_dkdv_kernel": kernels._dkdv_kernel,
           "_dq_kernel": kernels._dq_kernel, "_delta_kernel": kernels._delta_kernel,
           "_keep_mask_kernel": kernels._keep_mask_kernel,
           "_dropout_add_kernel": dropout_add._dropout_add_kernel}
POINTERS = ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ", "X", "RESIDUAL")
ONE_PROGRAM = triton.Config({})  # the kernels that are not autotuned: Triton's default warps and stages


def jit_function(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):  # unwrap the autotuner
        kernel = kernel.fn
    return kernel


def argument_type(name: str, dtype: str) -> str:
    if name in POINTERS + ("OUT",):
        return f"*{dtype}"
    if name in ("LSE", "DELTA"):
        return "*fp32"
    return {"seed": "i64", "threshold": "u32", "sm_scale": "fp32", "keep_scale": "fp32"}.get(name, "i32")


def compiles() -> list[tuple]:
    """(target, kernel name, dtype, constexprs, config, whether it must fit the target's shared
    memory), the slowest first."""
    jobs = []
    for target, (_, dtypes, _) in TARGETS.items():
        for dtype in dtypes:
            precision = "ieee" if dtype == "fp32" else None
            # fp32 dots (IEEE) are FMA loops on every target; only sm_80 pays for them at the largest tiles
            largest = 0 if dtype != "fp32" or target == "sm_80" else -1
            for pick, dropout, head_size in ((largest, True, 64), (-1, False, 128)):
                constexprs = dict(HEAD_DIM=head_size, BLOCK_D=head_size, DROPOUT=dropout,
                                  DOT_PRECISION=precision)
                for name, configs, branch in (("_forward_kernel", kernels._ROW_TILES, {}),
                                              ("_dkdv_kernel", kernels._COLUMN_TILES, {"KEY_TILES": True}),
                                              ("_dq_kernel", kernels._ROW_TILES, {"KEY_TILES": False})):
                    jobs.append((target, name, dtype, constexprs | branch, configs[pick], pick == -1))
                jobs.append((target, "_delta_kernel", dtype,
                             dict(HEAD_DIM=head_size, BLOCK_D=head_size, BLOCK_M=64), ONE_PROGRAM, True))
                jobs.append((target, "_dropout_add_kernel", dtype,
                             dict(HAS_RESIDUAL=dropout, BLOCK=dropout_add.BLOCK), ONE_PROGRAM, True))
        jobs.append((target, "_keep_mask_kernel", "u8", dict(BLOCK_M=16, BLOCK_N=64), ONE_PROGRAM, True))
    # fp32 at the largest tiles takes 10-17 s, a small kernel under one
    return sorted(jobs, key=lambda job: (job[2] != "fp32", job[4].num_warps != 8))


def compile_for(target: str, name: str, dtype: str, constexprs: dict, config: triton.Config,
                must_fit: bool) -> tuple[bool, str]:
    """(whether it compiled (and fits where it must), the line to print)."""
    capability, _, shared_limit = TARGETS[target]
    fn = jit_function(KERNELS[name])
    constexprs = {**constexprs, **config.kwargs}
    signature = {arg: "constexpr" if arg in constexprs else argument_type(arg, dtype)
                 for arg in fn.arg_names}
    what = f"{target} {name} {dtype} {constexprs} warps={config.num_warps} stages={config.num_stages}"
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", capability, 32),
                                  options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    except Exception as error:  # returned as text: Triton's errors do not all survive pickling
        return False, f"FAILED {what}:\n{type(error).__name__}: {error}"
    shared = compiled.metadata.shared
    if shared > shared_limit and must_fit:
        return False, f"FAILED {what}: needs {shared} bytes of shared memory, {target} has {shared_limit}"
    fits = "" if shared <= shared_limit else f" > {shared_limit // 1024} KiB: the autotuner skips it there"
    return True, f"compiled {what} shared={shared / 1024:.0f} KiB{fits} ({time.perf_counter() - start:.1f} s)"


def main() -> None:
    start = time.perf_counter()
    # one compile per core: each is single-threaded (Triton's passes, LLVM, ptxas); spawned
    # workers, so that no thread of torch's or Triton's is forked
    workers = len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(compile_for, *job) for job in compiles()]
        for future in as_completed(futures):
            ok, line = future.result()
            if not ok:
                pool.shutdown(cancel_futures=True)
                sys.exit(line)
            print(line, flush=True)
    print(f"all {len(futures)} compiles for {', '.join(TARGETS)} passed in {time.perf_counter() - start:.0f} s"
          f" ({workers} workers)")


if __name__ == "__main__":
    main()
