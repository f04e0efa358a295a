"""Compile the Triton kernels for an H100 (sm_90) with Triton's own compiler and ptxas, no GPU
needed: catches what the interpreter lets through (types, constexprs, dot shapes, layouts).
Run as a script with TRITON_INTERPRET unset (tests/test_attention.py does); exits non-zero
when a kernel does not compile."""
import os

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "the kernels must be decorated for a GPU"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastgpt.kernels import dropout_add  # noqa: E402
from fastgpt.kernels import flash_attention as kernels  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
POINTERS = ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ", "X", "RESIDUAL")


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


def compile_for_h100(kernel, dtype: str, constexprs: dict, config: triton.Config) -> None:
    fn = jit_function(kernel)
    constexprs = {**constexprs, **config.kwargs}
    signature = {name: "constexpr" if name in constexprs else argument_type(name, dtype)
                 for name in fn.arg_names}
    triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=H100,
                   options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    print(f"compiled {fn.__name__} {dtype} {constexprs} warps={config.num_warps}", flush=True)


def main() -> None:
    # bf16 with dropout at the largest tiles, fp32 (IEEE dots) at the smallest, head size 64
    for dtype, dropout, pick in (("bf16", True, 0), ("fp32", False, -1)):
        constexprs = dict(HEAD_DIM=64, BLOCK_D=64, DROPOUT=dropout,
                          DOT_PRECISION="ieee" if dtype == "fp32" else None)
        for kernel, configs in ((kernels._forward_kernel, kernels._ROW_TILES),
                                (kernels._dkdv_kernel, kernels._COLUMN_TILES),
                                (kernels._dq_kernel, kernels._ROW_TILES)):
            compile_for_h100(kernel, dtype, constexprs, configs[pick])
    compile_for_h100(kernels._delta_kernel, "bf16", dict(HEAD_DIM=64, BLOCK_D=64, BLOCK_M=64),
                     triton.Config({}))
    compile_for_h100(kernels._keep_mask_kernel, "u8", dict(BLOCK_M=16, BLOCK_N=64), triton.Config({}))
    compile_for_h100(dropout_add._dropout_add_kernel, "bf16", dict(HAS_RESIDUAL=True, BLOCK=dropout_add.BLOCK),
                     triton.Config({}))


if __name__ == "__main__":
    main()
