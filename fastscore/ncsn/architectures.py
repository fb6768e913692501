"""The score networks fastscore builds, by name, with how many times each halves the image (H and W
must be multiples of 2**that). Kept free of torch so that a config validates without importing it."""
from __future__ import annotations

DOWNSAMPLING = {"CondRefineNetDilated": 1, "CondRefineNetDeeperDilated": 2, "NCSNv2": 1, "NCSNv2Deeper": 2}
NAMES = tuple(DOWNSAMPLING)
