"""Pictures of attention from a trained checkpoint:

    fastgpt attention --out-dir out --prompt "ROMEO: But soft" [--layer L [--head H]]

(python -m fastgpt.attention_maps; from Python fastgpt.attention_maps(model_or_out_dir, prompt)).
One picture per layer, save_dir/layer<L>.png: every head's causal attention weights for the
prompt's characters, a row per query (the character attending), a column per key (the character
attended to), labelled with the characters. With --layer, only that layer's picture; with --head
too, one larger picture of that head, save_dir/layer<L>-head<H>.png. Layers and heads count from 0.

The fused kernels never materialise the weights (they keep one logsumexp per row), so the weights
are the reference's (fastgpt.attention.reference.reference_weights) of the queries and keys that the
model's own forward computes, in eval mode (no dropout): a forward hook records each layer's qkv
projection. The save directory follows the tools' rule (fastgpt.files): new or fastgpt's, never a
user's file replaced.
"""
import argparse
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from fastgpt.api import check_path, check_setting, make_callable, model_and_tokenizer
from fastgpt.attention.reference import reference_weights
from fastgpt.cli import DEVICE_HELP, check_range, run_cli
from fastgpt.errors import UserError
from fastgpt.files import atomic_write, claim_out_dir
from fastgpt.model import GPT
from fastgpt.notebook import in_notebook, show_images
from fastgpt.ops.layout import split_heads
from fastgpt.sample import encode_prompt

# How characters that print as nothing are labelled.
VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw the attention weights of a trained "
                                                 "checkpoint for a prompt, one picture per layer")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--out-dir", default="out",
                        help="training output directory: draws its best.pt (default: out)")
    source.add_argument("--checkpoint", help="a checkpoint file (last.pt, best.pt, ...) instead")
    parser.add_argument("--prompt", required=True,
                        help="the text whose attention to draw, at most block_size characters")
    parser.add_argument("--layer", type=int, default=None,
                        help="draw only this layer (0 to n_layer - 1)")
    parser.add_argument("--head", type=int, default=None,
                        help="with --layer: one larger picture of this head (0 to n_head - 1)")
    parser.add_argument("--save-dir", default="attention",
                        help="directory for the pictures (default: attention)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


@torch.no_grad()
def attention_weights(model: GPT, idx: Tensor) -> Tensor:
    """The causal attention weights (n_layer, B, n_head, T, T) of the model's forward of idx (B, T),
    in eval mode (the model's mode is restored after)."""
    recorded = []
    hooks = [block.attn.qkv.register_forward_hook(lambda module, inputs, qkv: recorded.append(qkv))
             for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model(idx)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return torch.stack([reference_weights(*split_heads(qkv, model.config.n_head)[:2])
                        for qkv in recorded])


def label(text: str) -> str:
    return "".join(VISIBLE.get(ch, ch) for ch in text)


def draw(weights: Tensor, labels: list[str], titles: list[str], cell_inches: float, path: Path) -> None:
    """A PNG of heads' weights (n, T, T) side by side, in rows of up to 4, on one colour scale;
    the future (above the diagonal) is left blank. matplotlib is imported here: start-up time."""
    from matplotlib.figure import Figure

    n, T = weights.shape[0], weights.shape[-1]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * cell_inches + 1.5, rows * cell_inches + 0.5), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    fontsize = max(3.0, min(11.0, 0.6 * 72 * cell_inches / T))  # points: 60 % of a row's height
    for ax, head_weights, title in zip(axes, weights, titles):
        image = ax.imshow(head_weights.float().cpu().masked_fill(future, float("nan")).numpy(),
                          cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(title)
        ax.set_xticks(range(T), labels, fontsize=fontsize)
        ax.set_yticks(range(T), labels, fontsize=fontsize)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
    for ax in axes[n:]:  # the grid's empty cells
        ax.set_axis_off()
    fig.colorbar(image, ax=axes[:n], shrink=0.8, label="attention weight")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)


def attention_maps(model_or_out_dir, prompt: str, *, layer: Optional[int] = None,
                   head: Optional[int] = None, save_dir: str | os.PathLike = "attention",
                   device: Optional[str] = None) -> list[Path]:
    """fastgpt.attention_maps(...): what `fastgpt attention` draws, its flags as keywords; returns
    the pictures' paths (in a notebook, also shows them). `model_or_out_dir`: a model from
    fastgpt.train or fastgpt.load, or an out_dir (its best.pt) or checkpoint file, loaded on `device`
    (auto). The weights themselves: attention_weights(model, idx). Bad settings raise
    fastgpt.UserError."""
    check_setting("prompt", prompt, str)
    for name, value in (("layer", layer), ("head", head)):
        if value is not None:
            check_setting(name, value, int)
    save_dir = Path(check_path("save_dir", save_dir))
    if not prompt:
        raise UserError("--prompt is empty; give the text whose attention to draw")
    if head is not None and layer is None:
        raise UserError("--head needs --layer: pass the layer the head is in")
    model, tokenizer = model_and_tokenizer(model_or_out_dir, device, None)
    config = model.config
    ids = encode_prompt(tokenizer, prompt)
    if len(ids) > config.block_size:
        raise UserError(f"--prompt has {len(ids)} tokens, more than the model's block_size "
                        f"{config.block_size}; shorten it")
    if layer is not None:
        check_range("--layer", layer, 0, config.n_layer - 1)
    if head is not None:
        check_range("--head", head, 0, config.n_head - 1)
    idx = torch.tensor([ids], device=model.lm_head.weight.device)
    weights = attention_weights(model, idx)[:, 0]  # (n_layer, n_head, T, T)
    labels = [label(tokenizer.decode([i])) for i in ids]
    # (path, weights (heads, T, T), titles); a cell grows with the prompt so its labels stay legible
    if head is None:
        pictures = [(save_dir / f"layer{L}.png", weights[L],
                     [f"layer {L}, head {h}" for h in range(config.n_head)])
                    for L in (range(config.n_layer) if layer is None else [layer])]
        cell_inches = min(3.0 + len(ids) / 16, 12.0)
    else:
        pictures = [(save_dir / f"layer{layer}-head{head}.png", weights[layer, head:head + 1],
                     [f"layer {layer}, head {head}"])]
        cell_inches = min(5.0 + len(ids) / 6, 20.0)
    paths = [path for path, _, _ in pictures]
    with claim_out_dir(save_dir, "--save-dir", "attention", [path.name for path in paths]):
        for path, picture_weights, titles in pictures:
            draw(picture_weights, labels, titles, cell_inches, path)
    if in_notebook():
        show_images(paths)
    return paths


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    for path in attention_maps(args.checkpoint or args.out_dir, args.prompt, layer=args.layer,
                               head=args.head, save_dir=args.save_dir, device=args.device):
        print(path)


make_callable(__name__, attention_maps)

if __name__ == "__main__":
    run_cli(main)
