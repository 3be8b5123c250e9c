"""The reference libraries the tests compare against (the `test` extra installs them all).

`reference("torch")` stands for the module and imports it on first use, inside a test: where it is
missing, that test alone is skipped (with the reason), and tests in the same file that do not need it
still run. conftest.py fails the whole run instead when a reference is missing, unless pytest is given
--allow-missing-references, so CI can never go green by skipping what it was meant to check.
"""

from __future__ import annotations

import importlib

import pytest

# import name -> the pip requirement that provides it (all in pyproject's `test` extra)
REFERENCES = {"torch": "torch==2.13.0", "transformers": "transformers", "tiktoken": "tiktoken",
              "tokenizers": "tokenizers", "safetensors": "safetensors", "hypothesis": "hypothesis",
              "matplotlib": "matplotlib", "mpi4py": "mpi4py and mpich", "duckdb": "duckdb", "psycopg": "psycopg[binary]",
              "playwright": "playwright", "openai": "openai", "httpx": "httpx", "schemathesis": "schemathesis",
              "fastapi": "fastapi (the serve extra)", "uvicorn": "uvicorn (the serve extra)",
              "prometheus_client": "prometheus_client (the serve extra)",
              "sklearn": "scikit-learn", "peft": "peft", "trl": "trl", "jsonschema": "jsonschema",
              "hypothesis_jsonschema": "hypothesis-jsonschema"}


def missing_references() -> list[str]:
    """The references that cannot be imported here."""
    return [name for name in REFERENCES if not importable(name)]


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


class reference:  # noqa: N801 -- used like a module name: torch = reference("torch")
    """A module imported when first used; pytest.importorskip inside the test that uses it."""

    def __init__(self, name: str):
        self._name = name
        self._module = None

    def __getattr__(self, attr: str):
        if attr.startswith("__"):     # pytest's collection probes module attributes (__test__, ...)
            raise AttributeError(attr)
        if self._module is None:
            self._module = pytest.importorskip(self._name, reason=f"{self._name} is not installed "
                                               "(pip install -e '.[test]')")
        return getattr(self._module, attr)
