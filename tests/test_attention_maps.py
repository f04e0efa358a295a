"""fastgpt attention (fastgpt.attention_maps): the weights are those of the model's own forward,
the pictures, and every input it refuses."""
import subprocess
import sys

import pytest
import torch

from clitools import assert_user_error, random_run, run_module, snapshot
from fastgpt.attention_maps import attention_maps, attention_weights
from fastgpt.model import GPT, GPTConfig
from fastgpt.ops.layout import merge_heads, split_heads

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def out_dir(tmp_path):
    return random_run(tmp_path / "out", TEXT, dropout=0.2)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_weights_are_those_of_the_models_forward(backend):
    """weights @ values, through the output projection, is what each layer's attention computed in
    the model's own (eval-mode) forward, on its backend; rows are causal distributions."""
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16,
                          dropout=0.2, attention=backend))
    idx = torch.randint(0, 11, (2, 13))
    computed = []  # each layer's attention: (its input, its output)

    def record(module, inputs, out):
        computed.append((inputs[0], out))

    for block in model.blocks:
        block.attn.register_forward_hook(record)
    weights = attention_weights(model, idx)  # (layers, B, heads, T, T)
    assert weights.shape == (2, 2, 2, 13, 13) and model.training  # its mode is given back
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 2, 13))
    assert (weights.triu(1) == 0).all()
    for i, block in enumerate(model.blocks):
        x, out = computed[i]
        _, _, v = split_heads(block.attn.qkv(x), 2)
        assert torch.allclose(block.attn.proj(merge_heads(weights[i] @ v)), out, atol=1e-6)


def test_one_picture_per_layer_then_one_head(out_dir, tmp_path):
    result = run_module("fastgpt", "attention", "--out-dir", out_dir, "--prompt", "ROMEO: But",
                        "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["attention/layer0.png", "attention/layer1.png"]
    result = run_module("fastgpt.attention_maps", "--out-dir", out_dir, "--prompt", "ROMEO: But",
                        "--layer", 1, "--head", 0, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["attention/layer1-head0.png"]
    for name in ("layer0.png", "layer1.png", "layer1-head0.png"):
        assert (tmp_path / "attention" / name).read_bytes()[:8] == PNG


def test_matplotlib_is_imported_only_to_draw():
    """Start-up time: importing the tool does not import matplotlib."""
    code = "import sys, fastgpt.attention_maps; assert 'matplotlib' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("flags, fragments", [
    (["--prompt", ""], ["--prompt is empty"]),
    (["--prompt", "ROMEO!"], ["the prompt has characters not in the vocabulary: '!'"]),
    (["--prompt", "ROMEO: But soft, what"], ["--prompt has 21 tokens, more than the model's block_size 16"]),
    (["--prompt", "RO", "--layer", "2"], ["--layer must be in [0, 1], got 2"]),
    (["--prompt", "RO", "--layer", "0", "--head", "-1"], ["--head must be in [0, 1], got -1"]),
    (["--prompt", "RO", "--head", "1"], ["--head needs --layer"]),
    (["--prompt", "RO", "--device", "tpu"], ["--device 'tpu' is not a device"]),
])
def test_bad_input_is_one_line(out_dir, tmp_path, flags, fragments):
    result = run_module("fastgpt", "attention", "--out-dir", out_dir, *flags, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "attention").exists()


def test_missing_checkpoint_is_one_line(tmp_path):
    assert_user_error(run_module("fastgpt", "attention", "--prompt", "RO", cwd=tmp_path),
                      "no checkpoint at out")


def test_a_users_file_is_never_replaced(out_dir, tmp_path):
    pictures = tmp_path / "mine"
    pictures.mkdir()
    (pictures / "layer0.png").write_bytes(b"my picture")
    before = snapshot(pictures)
    result = run_module("fastgpt", "attention", "--out-dir", out_dir, "--prompt", "RO",
                        "--save-dir", pictures, cwd=tmp_path)
    assert_user_error(result, f"{pictures / 'layer0.png'} is in the way")
    assert snapshot(pictures) == before
    with pytest.raises(Exception, match="is in the way"):
        attention_maps(out_dir, "RO", save_dir=pictures)


def test_its_own_pictures_are_redrawn(out_dir, tmp_path):
    """The save directory is fastgpt's once it has drawn there: drawing again replaces them."""
    first = attention_maps(out_dir, "RO", layer=0, save_dir=tmp_path / "maps", device="cpu")
    again = attention_maps(out_dir, "ROMEO", layer=0, save_dir=tmp_path / "maps", device="cpu")
    assert first == again == [tmp_path / "maps" / "layer0.png"]
