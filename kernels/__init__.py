"""Triton kernels, installed as `fastgpt.kernels`."""
