"""What runs a training job: `training.train(cfg)` and everything around it.

`config` (where the configs live, the fixed keys' rules, validation) and `cli` (one line and an exit code for
every bad input) import neither torch nor Lightning, and neither does this file: train.py's main process and
sweep.py load them before deciding whether torch is needed at all.
"""
