"""`numgpt tokenize` and `numgpt train-tokenizer` (being written: see issue 2)."""


def register(sub) -> None:
    pass
