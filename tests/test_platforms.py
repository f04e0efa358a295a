"""Choices made for machines this one is not: Colab's T4 and other GPUs below sm_80, Apple's MPS.
Each is checked by faking what torch reports (compute capability, MPS availability)."""
import pytest
import torch

import fastgpt.attention as dispatch
from clitools import TINY_RUN, assert_user_error, run_module
from fastgpt.cli import pick_device
from fastgpt.errors import UserError
from fastgpt.ops import cuda
from fastgpt.training.precision import resolve_dtype


@pytest.fixture
def gpu(monkeypatch):
    """A fake CUDA GPU with Triton usable; `gpu(capability)` sets its compute capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "missing", None)
    monkeypatch.setattr(dispatch, "_resolved", {})  # resolved choices are cached per process

    def with_capability(capability):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return with_capability


@pytest.mark.parametrize("capability, dtype", [((7, 5), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")])
def test_auto_dtype_follows_the_tensor_cores(gpu, capability, dtype):
    gpu(capability)
    assert resolve_dtype("auto", torch.device("cuda")) == dtype
    assert resolve_dtype("float32", torch.device("cuda")) == "float32"


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_dtype_is_float32_off_cuda(device):
    assert resolve_dtype("auto", torch.device(device)) == "float32"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_auto_attention_below_sm80_is_sdpa_and_triton_still_runs(gpu, dtype):
    gpu((7, 5))
    assert dispatch.resolve("auto", "cuda", dtype, 64) == "sdpa"
    assert "sm_75" in dispatch.explain("auto", "cuda", dtype, 64)
    assert dispatch.resolve("triton", "cuda", dtype, 64) == "triton"  # asked for: no warning, it runs


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)])
def test_auto_attention_from_sm80_is_triton(gpu, capability):
    gpu(capability)
    assert dispatch.resolve("auto", "cuda", torch.bfloat16, 64) == "triton"


def test_auto_attention_without_triton_is_sdpa(gpu, monkeypatch):
    gpu((8, 6))
    monkeypatch.setattr(cuda, "missing", "Triton is not installed")
    assert dispatch.resolve("auto", "cuda", torch.float16, 64) == "sdpa"


def test_mps_when_present(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("mps") == torch.device("mps")
    assert pick_device("auto") == torch.device("cpu")  # auto never picks MPS (docs/platforms.md)
    assert dispatch.resolve("auto", "mps", torch.float32, 16) == "sdpa"
    assert "no fused residual dropout for mps" in dispatch.residual_dropout_status("mps")


def test_mps_when_absent_is_one_line_naming_what_is_here(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"Apple GPU.*use one of cpu"):
        pick_device("mps")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an Apple GPU")
def test_train_with_an_absent_mps_exits_2(tmp_path):
    result = run_module("fastgpt.train", *TINY_RUN[:2], "--device", "mps", "--out-dir", tmp_path / "o", cwd=tmp_path)
    assert_user_error(result, "--device mps", "Apple GPU")
    assert not (tmp_path / "o").exists()
