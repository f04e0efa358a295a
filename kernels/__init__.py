"""fastgpt's Triton kernels (installed as fastgpt.kernels)."""
# The kernels take their shared constants from fastgpt.attention, which registers them as the op's
# CUDA kernels: importing it first means any import order meets fully initialised modules.
import fastgpt.attention  # noqa: F401
