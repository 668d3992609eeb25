"""For setuptools < 61 (EL 9): everything is in setup.cfg, which mirrors pyproject.toml."""

from setuptools import setup

setup()
