"""`python -m nanovlm.evaluate ckpt=...`: evaluate a training checkpoint (nanovlm/evaluate/checkpoint.py)."""

import sys

from nanovlm.evaluate.checkpoint import main

sys.exit(main())
