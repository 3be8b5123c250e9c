"""numgpt: GPT-2 from scratch in NumPy.

The public API (everything else is internal and may change):
"""

from .config import GPTConfig, PRESETS
from .errors import NumgptError

__all__ = ["GPTConfig", "PRESETS", "NumgptError"]
__version__ = "0.1.0"
