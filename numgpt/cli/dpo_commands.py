"""`numgpt dpo` (being written; registers nothing yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to `numgpt`'s parser."""
