"""Train the lecture's model (tests/lecture_gpt.py) exactly as `python -m fastgpt.train` trains
fastgpt's: the same flags and presets, data split, batches, seed, AdamW, schedule, clipping and
loop (`fastgpt.training.run.set_up`, `fastgpt.train.training_loop`), so that only the model differs. Prints each
evaluation as a JSON line; the last one holds the final val loss and the training tokens/s.

    python -m bench.train_lecture_baseline --preset cpu --max-iters 2000   # from the repository root
    python -m fastgpt.train --preset cpu --max-iters 2000 --attention torch   # to compare with
"""
import json

from tests.lecture_gpt import GPTLanguageModel
from fastgpt.cli import run_cli
from fastgpt.training.config import build_parser, config_from_args, validate
from fastgpt.model import GPTConfig
from fastgpt.train import training_loop
from fastgpt.training.run import set_up


def lecture_model(config: GPTConfig) -> GPTLanguageModel:
    return GPTLanguageModel(config.vocab_size, config.block_size, config.n_embd, config.n_head,
                            config.n_layer, config.dropout)


def main() -> None:
    cfg = config_from_args(build_parser(__doc__.splitlines()[0]).parse_args())
    validate(cfg)
    run = set_up(cfg, None, make_model=lecture_model)

    def report(iteration, losses, lr, tokens_per_s):
        print(json.dumps({"model": "lecture", "iter": iteration, "train_loss": losses["train"],
                          "val_loss": losses["val"], "lr": lr, "tokens_per_s": tokens_per_s}),
              flush=True)

    training_loop(run.model, run, cfg, report)


if __name__ == "__main__":
    run_cli(main)
