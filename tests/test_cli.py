"""What every tool shares (fastgpt.cli) and the `fastgpt` command that fronts them."""
import math
import shutil
import subprocess

import pytest
import torch

from clitools import assert_user_error, run_module
from fastgpt.cli import check_positive, check_range, pick_device
from fastgpt.errors import UserError


@pytest.mark.parametrize("name", ["bogus", "meta", "tpu7", "cuda:x", ""])
def test_names_that_are_no_usable_device_are_refused(name):
    with pytest.raises(UserError, match="is not a device fastgpt runs on"):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:3"])
def test_cuda_without_cuda_is_refused(name):
    with pytest.raises(UserError, match="asks for CUDA, which this machine"):
        pick_device(name)


def test_auto_and_cpu_pick_a_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(UserError, match="--x must be a finite number"):
        check_range("--x", value, 0)


@pytest.mark.parametrize("check, value, message", [
    (lambda v: check_positive("--x", v), 0, "--x must be positive, got 0"),
    (lambda v: check_range("--x", v, 0, 1, below=True), 1.0, "--x must be in [0, 1), got 1.0"),
    (lambda v: check_range("--x", v, 0, 1, above=True), 0.0, "--x must be in (0, 1], got 0.0"),
    (lambda v: check_range("--x", v, 3), 2, "--x must be at least 3, got 2"),
])
def test_out_of_range_numbers_name_the_flag_and_the_range(check, value, message):
    with pytest.raises(UserError) as error:
        check(value)
    assert str(error.value) == message


def test_in_range_numbers_pass():
    check_positive("--x", 1e-9)
    check_range("--x", 0.0, 0, 1, below=True)


def test_fastgpt_command_runs_each_tool(tmp_path):
    result = run_module("fastgpt", "info", cwd=tmp_path)
    assert result.returncode == 0 and "auto ->" in result.stdout, result.stderr
    result = run_module("fastgpt", "train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: fastgpt train")
    result = run_module("fastgpt", cwd=tmp_path)
    assert result.returncode == 0 and "fastgpt sample" in result.stdout


def test_unknown_command_and_unknown_flag_are_one_line_errors(tmp_path):
    assert_user_error(run_module("fastgpt", "fly", cwd=tmp_path), "unknown command 'fly'")
    result = run_module("fastgpt.info", "--bogus", cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


@pytest.mark.skipif(shutil.which("fastgpt") is None, reason="the package's console script is not installed")
def test_console_script_is_installed(tmp_path):
    result = subprocess.run(["fastgpt", "info"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "auto ->" in result.stdout, result.stderr
