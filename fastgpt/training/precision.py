"""Mixed precision: `--dtype float32|bfloat16|float16` runs the forward passes under torch.autocast
(matrix products in the low precision, softmax, LayerNorm and the loss in float32) while the weights
and the optimizer stay float32. float16 needs a GradScaler so that small gradients do not flush to
zero; bfloat16 has float32's range and needs none. `auto` is bfloat16 on CUDA GPUs of compute
capability 8.0 and above, float16 below (a T4 has no bfloat16: torch only emulates it), and float32
elsewhere (the CPU, Apple's MPS)."""
import warnings
from contextlib import nullcontext

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX: without them CPU bfloat16 is emulated, and slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


# The first compute capability with bfloat16 tensor cores (Ampere); below it, float16 has them.
BFLOAT16_CAPABILITY = (8, 0)


def resolve_dtype(name: str, device: torch.device) -> str:
    """`auto` made concrete: on CUDA the low precision the tensor cores run, bfloat16 from sm_80 on,
    float16 (with a GradScaler) below, where bfloat16 is emulated; float32 on the CPU, where
    bfloat16 is fast only on some processors (AVX512-BF16, AMX), and on MPS."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.get_device_capability(device) >= BFLOAT16_CAPABILITY else "float16"


class Precision:
    def __init__(self, name: str, device: torch.device):
        self.name = resolve_dtype(name, device)
        self.dtype = DTYPES[self.name]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        if self.dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bfloat16():
            warnings.warn("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bfloat16 is "
                          "emulated and slower than float32", RuntimeWarning, stacklevel=2)

    def autocast(self):
        """The context of a forward pass."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)
