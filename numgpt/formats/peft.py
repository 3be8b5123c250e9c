"""PEFT LoRA adapter folders for GPT-2: adapter_config.json + adapter_model.safetensors, in and out.

    adapter_config.json         {"peft_type": "LORA", "r": 8, "lora_alpha": 8.0, "target_modules": [...],
                                 "fan_in_fan_out": true, "bias": "none", ...}  (what peft's LoraConfig reads)
    adapter_model.safetensors   base_model.model.transformer.h.0.attn.c_attn.lora_A.weight [r, in]
                                base_model.model.transformer.h.0.attn.c_attn.lora_B.weight [out, r]  ...
                                base_model.model.transformer.wte.token_adapter.trainable_tokens_delta [k, C]

The last is there when rows of wte were trained too (peft's LoraConfig(trainable_token_indices=[ids]),
listed in the config's "trainable_token_indices"): despite its name, peft stores the rows' new values,
not a difference, and puts them in place of wte's rows, for the input and the tied output head alike.

The folder `peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE), FOLDER)` loads
(peft's save_pretrained layout, checked against peft 0.21 in tests/test_lora.py). fan_in_fan_out is true
because GPT-2's linear layers are Conv1D ([in, out] weights): it only matters when peft merges.
PEFT's lora_A / lora_B are nn.Linear weights ([r, in], [out, r]); numgpt's are [in, r] and [r, out]
(posttrain/lora.py): the transposes happen here and nowhere else. The base model's fingerprint rides in
the safetensors metadata (peft ignores it), so an adapter is not applied to another base.

Plain values in and out (rank, alpha, module names, tensors): the LoRA model itself is posttrain/lora.py's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomically
from ..errors import NumgptError
from ..ops import stored_out_in
from .hf import CLASSIFIER_HEAD, not_a_language_model
from .safetensors import read_header, read_safetensors, write_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model.transformer."
FINGERPRINT_KEY = "numgpt_base_fingerprint"
_SUFFIXES = {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B"}   # PEFT's -> numgpt's last name part
TOKENS = "wte.trainable_tokens"                                        # numgpt's name of trained wte rows [k, C]
TOKENS_KEY = PREFIX + "wte.token_adapter.trainable_tokens_delta"       # PEFT's (new values, despite "delta")
EMBED_A, EMBED_B = "wte.lora_A", "wte.lora_B"   # numgpt's names of an embedding adapter: A_e [V, r], B_e [r, C]


def save_adapter(folder: str | os.PathLike, *, rank: int, alpha: float, modules: list[str],
                 tensors: dict[str, np.ndarray], base: str = "", fingerprint: str = "",
                 tokens: list[int] | tuple[int, ...] = ()) -> Path:
    """Write an adapter folder. tensors: numgpt's names and orientation ('h.0.attn.c_attn.lora_A' [in, r],
    '.lora_B' [r, out], and TOKENS [k, C]: the new values of wte's rows `tokens`); modules: the adapted
    module names (attn.c_attn, ...); base: the base model's name or folder (peft's base_model_name_or_path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, t in tensors.items():
        if name == TOKENS:
            out[TOKENS_KEY] = np.ascontiguousarray(t, np.float32)          # [k, C] as peft keeps it
            continue
        stem, part = name.rsplit(".", 1)                       # 'h.0.attn.c_attn', 'lora_A'
        out[f"{PREFIX}{stem}.{part}.weight"] = np.ascontiguousarray(np.asarray(t, np.float32).T)
    write_safetensors(folder / WEIGHTS_FILE, out, metadata={"format": "pt", FINGERPRINT_KEY: fingerprint})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base or None, "r": rank,
              "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(modules), "fan_in_fan_out": True,
              "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
              "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
              "rank_pattern": {}, "alpha_pattern": {},
              "trainable_token_indices": [int(i) for i in tokens] or None}
    write_bytes_atomically(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def load_adapter(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(config dict, tensors in numgpt's names and orientation, base fingerprint or "") of an adapter
    folder. Refused in one line: a missing file, another peft type, what numgpt's LoRA does not compute
    (rsLoRA, DoRA, trained biases, per-layer ranks), a tensor name outside GPT-2's blocks, LoRA on the
    embedding (peft's adapts the input but not the tied head, which no merged model can be)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise NumgptError(f"{folder}: {what}; pass an adapter folder (RUN/adapter of `numgpt train --lora-rank R`, "
                          "or peft's save_pretrained)")
    if not (folder / CONFIG_FILE).is_file() and (folder / "adapter" / CONFIG_FILE).is_file():
        raise NumgptError(f"{folder}: a run folder; its adapter is {folder / 'adapter'}")
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / f).is_file():
            raise NumgptError(f"{folder}: no {f}; an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                              "(what `numgpt train --lora-rank R` and peft's save_pretrained write)")
    config = _read_config(folder / CONFIG_FILE)
    raw, metadata = read_safetensors(folder / WEIGHTS_FILE, mmap=False)
    tensors = {}
    for key, t in raw.items():
        if key == TOKENS_KEY:
            tensors[TOKENS] = np.ascontiguousarray(t)
            continue
        if ".lora_embedding_" in key:
            raise NumgptError(f"{folder / WEIGHTS_FILE}: {key!r} adapts the token embedding; PEFT applies such an "
                              "adapter to the input only, not to GPT-2's tied vocabulary projection, so numgpt "
                              "does not load it onto a language model (LoRA on wte is for classify and reward)")
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if not key.startswith(PREFIX) or suffix is None:
            raise NumgptError(f"{folder / WEIGHTS_FILE}: tensor {key!r} is not a LoRA matrix of a GPT-2 block "
                              f"({PREFIX}h.N.attn.c_attn.lora_A.weight, ...)")
        stem = key[len(PREFIX):-len(suffix)]
        tensors[f"{stem}.{_SUFFIXES[suffix]}"] = np.ascontiguousarray(t.T)
    return config, tensors, metadata.get(FINGERPRINT_KEY, "")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NumgptError(f"{path}: not a JSON adapter config ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise NumgptError(f"{path}: peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}; "
                          "numgpt loads LoRA adapters (peft_type LORA)")
    refused = {"use_rslora": "rsLoRA", "use_dora": "DoRA"}
    for key, what in refused.items():
        if config.get(key):
            raise NumgptError(f"{path}: a {what} adapter ({key}: true); numgpt computes plain LoRA only")
    if config.get("bias", "none") != "none":
        raise NumgptError(f"{path}: bias {config['bias']!r}; numgpt's adapters train no biases (bias: none)")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise NumgptError(f"{path}: {key} is set; numgpt's adapters have one rank and alpha for every layer")
    if config.get("modules_to_save"):
        raise NumgptError(f"{path}: modules_to_save {config['modules_to_save']!r}; numgpt's adapters hold "
                          "LoRA matrices only")
    for key in ("r", "lora_alpha"):
        if isinstance(config.get(key), bool) or not isinstance(config.get(key), (int, float)):
            raise NumgptError(f"{path}: {key} must be a number, got {config.get(key)!r}")
    tokens = config.get("trainable_token_indices")
    if isinstance(tokens, dict) and set(tokens) <= {"wte", "transformer.wte"} and len(tokens) == 1:
        tokens = config["trainable_token_indices"] = next(iter(tokens.values()))   # peft's {module: ids} form
    if tokens is not None and not (isinstance(tokens, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in tokens)):
        raise NumgptError(f"{path}: trainable_token_indices {tokens!r}; numgpt trains rows of wte only, given "
                          "as a list of token ids")
    return config


def base_fingerprint(params: dict[str, np.ndarray], names: list[str]) -> str:
    """A sha256 over the names, shapes and 256 evenly spaced values of each of the base's tensors `names`:
    cheap on a memory map (no tensor is read whole), and different for any other base in practice (a
    fine-tuned copy moves every value)."""
    import hashlib

    h = hashlib.sha256()
    for name in names:
        t = params[name]
        flat = np.linspace(0, t.size - 1, num=min(256, t.size)).astype(np.int64)
        sample = np.asarray(t[np.unravel_index(flat, t.shape)], np.float32)   # works on transposed views too
        h.update(f"{name}{list(t.shape)}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def merged_weight(w: np.ndarray, a: np.ndarray, bm: np.ndarray, scale: float) -> np.ndarray:
    """w + scale * a @ bm, [in, out], in w's memory layout (numgpt.load's [out, in] copies stay so, for
    decode speed; a plain [in, out] array stays plain)."""
    delta = (a @ bm) * np.float32(scale)                       # [in, r] x [r, out] -> [in, out]
    if stored_out_in(w):
        merged_t = np.array(w.T, np.float32)                   # [out, in], C-ordered
        merged_t += delta.T
        return merged_t.T
    return np.asarray(w, np.float32) + delta


BLOCK_MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # GPT-2's linear layers in a block


def checked_adapter(folder: str | os.PathLike, config, params: dict[str, np.ndarray]
                    ) -> tuple[int, float, list[str], dict[str, np.ndarray], list[int]]:
    """(rank, alpha, adapted modules, tensors, trained token ids) of an adapter folder, checked against the
    base it is put on (config, params): every block adapted alike, shapes that fit the base's layers and
    the rank, token ids inside its vocabulary, and the base's fingerprint if the adapter recorded one.
    Another base is a one-line NumgptError."""
    from ..params import param_shapes

    folder = Path(folder)
    settings, tensors, fingerprint = load_adapter(folder)
    rank, alpha = settings["r"], float(settings["lora_alpha"])
    shapes = param_shapes(config)
    modules = [m for m in BLOCK_MODULES if any(n.startswith("h.") and n.split(".", 2)[2].startswith(m + ".lora_")
                                               for n in tensors)]
    expected = {}
    for i in range(config.n_layer):
        for m in modules:
            n_in, n_out = shapes[f"h.{i}.{m}.weight"]
            expected[f"h.{i}.{m}.lora_A"], expected[f"h.{i}.{m}.lora_B"] = (n_in, rank), (rank, n_out)
    recorded = settings.get("base_model_name_or_path")
    other = f"another base model ({recorded}, as its {CONFIG_FILE} records)" if recorded else "another base model"
    tokens = settings.get("trainable_token_indices") or []
    if tokens:
        expected[TOKENS] = (len(tokens), config.n_embd)
        if max(tokens) >= config.vocab_size:
            raise NumgptError(f"{folder}: the adapter trains token {max(tokens)}, beyond this base's vocabulary "
                              f"of {config.vocab_size}; it was made for {other}")
    for name in sorted(set(tensors) | set(expected)):
        got, want = tensors.get(name), expected.get(name)
        if got is None or want is None or got.shape != want:
            what = ("has no " + name if got is None else f"has {name} {list(got.shape)}" +
                    ("" if want is None else f" where this base needs {list(want)}"))
            raise NumgptError(f"{folder}: the adapter {what}; it was made for {other} ({config.n_layer} layers, "
                              f"n_embd {config.n_embd} here) or is damaged")
    if fingerprint and fingerprint != base_fingerprint(params, list(shapes)):
        raise NumgptError(f"{folder}: the adapter was trained on another base model (its recorded base fingerprint "
                          f"{fingerprint[:12]}... differs from this one's); pass the --model it was trained on"
                          + (f" ({recorded}, as its {CONFIG_FILE} records)" if recorded else ""))
    return rank, alpha, modules, tensors, tokens


def merge_adapter(folder: str | os.PathLike, config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base `params` with the adapter folder merged in (W + alpha/r A B per adapted layer; new arrays
    for those, the others shared): what numgpt.load(base, adapter=FOLDER) runs."""
    rank, alpha, modules, tensors, tokens = checked_adapter(folder, config, params)
    return merge_tensors(params, config, modules, tensors, alpha / rank, tokens)


def merge_tensors(params: dict[str, np.ndarray], config, modules: list[str], tensors: dict[str, np.ndarray],
                  scale: float, tokens: list[int] | tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """params with W + scale A B in every block's `modules` (tensors: numgpt's adapter names), wte + scale
    A_e B_e when tensors hold an embedding adapter (EMBED_A, EMBED_B), and wte's rows `tokens` replaced by
    tensors[TOKENS] (a new wte); the others shared."""
    merged = dict(params)
    if len(tokens) or EMBED_A in tensors:
        wte = np.array(params["wte.weight"], np.float32)      # [V, C], a copy: the base may be a memory map
        if EMBED_A in tensors:
            wte += (tensors[EMBED_A] @ tensors[EMBED_B]) * np.float32(scale)   # [V, r] x [r, C] -> [V, C]
        if len(tokens):
            wte[list(tokens)] = tensors[TOKENS]                # [k, C] in place of rows tokens
        merged["wte.weight"] = wte
    for i in range(config.n_layer):
        for m in modules:
            w = f"h.{i}.{m}.weight"
            merged[w] = merged_weight(params[w], tensors[f"h.{i}.{m}.lora_A"], tensors[f"h.{i}.{m}.lora_B"], scale)
    return merged


RUN_EXTRA_FILE = "extra_params.safetensors"   # training/state.py's EXTRA_FILE: trained tensors beyond the schema
RUN_STATE_FILE = "trainstate.json"            # training/state.py's STATE_FILE


def refuse_classifier_checkpoint(folder: str | os.PathLike) -> None:
    """A training checkpoint of a classify or reward run keeps its head in extra_params.safetensors, beside a
    model.safetensors that loads as a plain GPT-2: refused where a language model is wanted (init=, --model)."""
    folder = Path(folder)
    if (folder / RUN_EXTRA_FILE).is_file() and CLASSIFIER_HEAD in read_header(folder / RUN_EXTRA_FILE)[0]:
        raise not_a_language_model(folder)


def merge_run_adapter(folder: str | os.PathLike, config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """params, with the adapter merged in when `folder` is a checkpoint of a LoRA run (`numgpt train
    --lora-rank`: RUN/latest and RUN/best hold the frozen base, the adapter in extra_params.safetensors, its
    rank and alpha in trainstate.json), so `--model RUN` runs what the run trained; params as given otherwise."""
    folder = Path(folder)
    if not (folder / RUN_EXTRA_FILE).is_file():
        return params
    refuse_classifier_checkpoint(folder)                                # a classify or reward run's head
    try:
        lora = json.loads((folder / RUN_STATE_FILE).read_text(encoding="utf-8"))["train_config"]["lora"]
        scale = float(lora["alpha"]) / int(lora["rank"])
        tokens = [int(i) for i in lora.get("tokens", [])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NumgptError(f"{folder}: a training checkpoint with extra tensors but no readable LoRA settings in "
                          f"{RUN_STATE_FILE} ({type(e).__name__}: {e}); the checkpoint is damaged") from None
    tensors, _ = read_safetensors(folder / RUN_EXTRA_FILE, mmap=False)
    modules = [m for m in BLOCK_MODULES if f"h.0.{m}.lora_A" in tensors]
    return merge_tensors(params, config, modules, tensors, scale, tokens)
