"""Doctest set-up for the package's docstrings: figures render off-screen."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
