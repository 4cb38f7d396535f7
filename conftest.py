"""Test-session defaults shared by every test directory."""

import os

# The compiled elementwise path costs seconds of compilation per new shape; tests of the maths run
# the eager definition, and tests/test_fusion.py switches the compiled path on to compare the two.
os.environ.setdefault("SSIMLAYER_FUSE", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
