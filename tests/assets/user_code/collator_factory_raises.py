"""make_collator fails: it looks up a token the tokenizer does not have."""


def make_collator(tokenizer):
    vocab = tokenizer.get_vocab()
    sep = vocab["<|no_such_token|>"]  # line 6: KeyError
    return lambda features: {"labels": [[sep] for _ in features]}
