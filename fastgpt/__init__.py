"""fastgpt: the character-level GPT of Karpathy's lecture, trained and sampled fast."""
__version__ = "0.1.0"
