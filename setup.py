"""Build script: only what pyproject.toml cannot say."""

from setuptools import setup

setup()
