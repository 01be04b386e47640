"""`python -m nanovlm.bench`: the Lightning training path against a plain PyTorch loop (nanovlm/bench/figures.py)."""

import sys

from nanovlm.bench.figures import main

sys.exit(main())
