"""Packaging: fastscore/ plus kernels/ installed as fastscore.kernels."""
from setuptools import setup

setup(
    packages=["fastscore", "fastscore.ops", "fastscore.kernels"],
    package_dir={"fastscore.kernels": "kernels"},
)
