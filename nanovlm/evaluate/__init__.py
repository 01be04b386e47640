"""How a model is scored: the one ranking rule, the metrics validation logs, zero-shot classification, pictures,
and `python -m nanovlm.evaluate ckpt=...` (`checkpoint`, run by `__main__`).

Nothing is imported here: validation imports `nanovlm.evaluate.metrics` without the evaluation command's imports.
"""
