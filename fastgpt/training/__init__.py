"""What a training run is made of; the loop itself is fastgpt/train.py.

- `config.py`: TrainConfig (every flag), the presets, argparse built from it.
- `run.py`: the run set up, fresh or restored from a checkpoint (data, model, optimizer, random
  state, gradient scaler), and the random state a checkpoint saves.
- `writer.py`: what a run leaves in its out_dir, and when (checkpoints, metrics, plot).
- `run_dir.py`: the out_dir over its life (no overwrites, resume checks, the lock).
- `metrics.py`: metrics.jsonl and loss.png.
- `progress.py`: what a run prints, its ETA, and the measured training throughput.
- `signals.py`: SIGTERM/SIGINT as a request to stop after the step.
- `precision.py`: --dtype, autocast and the GradScaler.
- `distributed.py`: torchrun's processes (DDP).
"""
