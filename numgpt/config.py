"""GPTConfig: the shape of a GPT-2 model, as a frozen dataclass, with the published presets.

Field names follow Hugging Face's GPT2Config (n_layer, n_head, n_embd, n_positions, vocab_size,
layer_norm_epsilon) so that config.json reads and writes without a renaming table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import NumgptError, whole_number


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters that fix every parameter shape of a GPT-2 model."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int | None = 50256   # None: the vocabulary has no <|endoftext|>
    eos_token_id: int | None = 50256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):   # plain ints from here on
            object.__setattr__(self, name, whole_number(f"GPTConfig.{name}", getattr(self, name), minimum=1))
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, whole_number(f"GPTConfig.{name}", getattr(self, name), minimum=0,
                                                            extra=" or null"))
        if isinstance(self.layer_norm_epsilon, bool) or not isinstance(self.layer_norm_epsilon, (int, float)) \
                or not self.layer_norm_epsilon > 0:
            raise NumgptError(f"GPTConfig.layer_norm_epsilon must be a positive number, got {self.layer_norm_epsilon!r}")
        if self.n_embd % self.n_head:
            raise NumgptError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json a Hugging Face GPT2LMHeadModel expects."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "n_ctx": self.n_positions,
            "n_inner": None,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            **dataclasses.asdict(self),
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """Read the fields numgpt uses from a Hugging Face config.json dict; refuse what GPT-2 is not."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise NumgptError(f"model_type is {d.get('model_type')!r}, numgpt runs only 'gpt2'")
        if d.get("n_inner") not in (None, 4 * d.get("n_embd", 768)):
            raise NumgptError(f"n_inner={d['n_inner']} is not supported (GPT-2 uses 4 * n_embd)")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise NumgptError(f"activation_function {act!r} is not supported (GPT-2 uses gelu_new)")
        missing = [k for k in SHAPE_FIELDS if k not in d] + ([] if "n_positions" in d or "n_ctx" in d
                                                             else ["n_positions"])
        if missing:
            raise NumgptError(f"{', '.join(missing)} missing: a GPT-2 config.json states the model's shape "
                             f"({', '.join(SHAPE_FIELDS)}, n_positions); numgpt does not guess it")
        fields = {f.name for f in dataclasses.fields(cls)}
        nullable = {"bos_token_id", "eos_token_id"}
        kwargs = {k: v for k, v in d.items() if k in fields and (v is not None or k in nullable)}
        if "n_positions" not in kwargs and "n_ctx" in d:
            kwargs["n_positions"] = d["n_ctx"]
        return cls(**kwargs)


SHAPE_FIELDS = ("vocab_size", "n_embd", "n_layer", "n_head")   # config.json must give these (and n_positions)

# The published GPT-2 sizes, plus small shapes for tests and the built-in model.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    "tiny": GPTConfig(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=4),
}
