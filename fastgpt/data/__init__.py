"""The data a model trains on, from a text to batches of token ids.

- `text.py`: a UTF-8 text (a file, or tiny Shakespeare shipped with the package) read in pieces,
  scanned for its vocabulary and hash, and encoded to character ids in memory.
- `batches.py`: the 90 % / 10 % train/val split and the seeded random batches of windows.
- `dataset.py`: the memory-mapped datasets that `python -m fastgpt.prepare` writes.
- `tokenizer.py`: the character tokenizer and the byte-level BPE one (HF `tokenizers`).
"""
