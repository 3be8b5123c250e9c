"""The peers of bench_decode.py: the same Hugging Face GPT-2 checkpoint exported to ONNX Runtime (float32 and
dynamic int8) and converted to CTranslate2 (float32); ONNX Runtime wrapped as a greedy step generator
speaking bench_inference.py's protocol (prefill, then yield each step's tokens [B, 1]), CTranslate2 timed
per slice of steps inside its own generate_batch (`Ct2Slices`).

How each peer is made (export_onnx, quantize_onnx, convert_ct2; cached in a folder beside the run):
  - ONNX Runtime fp32: `CachedGPT2`, a small torch module running the checkpoint's own tensors (GPT2LMHeadModel's
    wte, wpe, ln_*, c_attn, c_proj, c_fc, ln_f; tanh GELU; the tied lm_head), with the KV cache as explicit
    tensors: inputs input_ids [B, T], position_ids [B, T], attention_mask [B, P+T] (1 = real token),
    past_keys / past_values [L, B, H, P, D]; outputs the last position's logits [B, V] and present_keys /
    present_values [L, B, H, P+T, D]; the tied lm_head is a [C, V] copy of wte (so int8 quantizes it).
    Exported with torch.onnx.export (dynamo, opset 18, dynamic B, T, P),
    run with onnxruntime.InferenceSession, graph optimizations ORT_ENABLE_ALL, intra_op_num_threads=2,
    inter_op_num_threads=1. A prompt is prefilled through the same graph with P = 0.
  - ONNX Runtime int8: that .onnx quantized by onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)
    (per-tensor int8 weights of every MatMul, the lm_head included; activations quantized per call).
  - CTranslate2 float32: the converter of ctranslate2 (TransformersConverter / ct2-transformers-converter)
    needs the checkpoint's tokenizer for the vocabulary and the bench's checkpoint has none (transformers'
    save_pretrained of a bare model), so the conversion is done without one: its own GPT2Loader builds the
    model spec from the loaded GPT2LMHeadModel (the same code path as the converter), the vocabulary is the
    token names "t0" .. "t{V-1}" (ids map 1:1; eos = the last id, as GPT-2's 50256), validated, optimized
    with quantization None and saved. Run with ctranslate2.Generator(device="cpu", intra_threads=2,
    inter_threads=1, compute_type="float32"), generate_batch(include_prompt_in_result=False: the prompt is
    prefilled at once, beam_size=1, min_length=max_length so it never stops early), timed per slice of steps
    by difference (`Ct2Slices`).

`check_onnx` holds the exported graph to transformers' greedy `generate` (tests: the bench's --tiny run).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

OPSET = 18


def load_hf(folder: Path):
    import torch
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()


def cached_gpt2(hf_model):
    """A torch module with explicit KV-cache tensors over the HF model's own parameters (see the docstring)."""
    import torch
    import torch.nn.functional as F

    class CachedGPT2(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.t = model.transformer
            cfg = model.config
            self.H, self.eps = cfg.n_head, cfg.layer_norm_epsilon
            self.D = cfg.n_embd // cfg.n_head
            # the tied projection as its own [C, V] constant: a plain MatMul with a stored weight, which
            # quantize_dynamic quantizes too (a Transpose of wte at run time it would leave in fp32)
            self.register_buffer("lm_head_weight", model.transformer.wte.weight.detach().T.contiguous().clone())

        def forward(self, input_ids, position_ids, attention_mask, past_keys, past_values):
            B, T = input_ids.shape
            P = past_keys.shape[3]
            H, D = self.H, self.D
            x = self.t.wte(input_ids) + self.t.wpe(position_ids)                       # [B, T, C]
            key_at = torch.arange(P + T, device=x.device)                             # [S]
            query_at = torch.arange(T, device=x.device) + P                           # [T]
            allowed = (key_at[None, :] <= query_at[:, None])[None, None] \
                & attention_mask.bool()[:, None, None, :]                             # [B, 1, T, S]
            keys, values = [], []
            for i, h in enumerate(self.t.h):
                a = h.ln_1(x)
                qkv = torch.addmm(h.attn.c_attn.bias, a.reshape(B * T, -1), h.attn.c_attn.weight)
                q, k, v = qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)           # 3 x [B, H, T, D]
                k = torch.cat([past_keys[i], k], dim=2)                               # [B, H, S, D]
                v = torch.cat([past_values[i], v], dim=2)
                keys.append(k)
                values.append(v)
                s = (q @ k.transpose(-1, -2)) * (1.0 / D ** 0.5)                      # [B, H, T, S]
                s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
                y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B * T, H * D)         # [B*T, C]
                x = x + torch.addmm(h.attn.c_proj.bias, y, h.attn.c_proj.weight).reshape(B, T, -1)
                m = h.ln_2(x).reshape(B * T, -1)
                m = F.gelu(torch.addmm(h.mlp.c_fc.bias, m, h.mlp.c_fc.weight), approximate="tanh")
                x = x + torch.addmm(h.mlp.c_proj.bias, m, h.mlp.c_proj.weight).reshape(B, T, -1)
            last = self.t.ln_f(x[:, -1])                                               # [B, C]
            logits = last @ self.lm_head_weight                                        # [B, C] -> [B, V]
            return logits, torch.stack(keys), torch.stack(values)

    return CachedGPT2(hf_model).eval()


def _example_inputs(config, b: int = 2, t: int = 3, past: int = 4):
    import torch
    L, H, D = config.n_layer, config.n_head, config.n_embd // config.n_head
    return (torch.zeros(b, t, dtype=torch.int64), torch.arange(past, past + t).repeat(b, 1),
            torch.ones(b, past + t, dtype=torch.int64),
            torch.zeros(L, b, H, past, D), torch.zeros(L, b, H, past, D))


def export_onnx(ckpt: Path, out: Path) -> Path:
    """ckpt -> out/model.onnx (fp32), made once."""
    import torch
    path = out / "model.onnx"
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    model = load_hf(ckpt)
    module = cached_gpt2(model)
    B = T = P = S = torch.export.Dim.DYNAMIC                  # S = P + T: the exporter infers the relation
    dynamic = {"input_ids": {0: B, 1: T}, "position_ids": {0: B, 1: T}, "attention_mask": {0: B, 1: S},
               "past_keys": {1: B, 3: P}, "past_values": {1: B, 3: P}}
    names = ["input_ids", "position_ids", "attention_mask", "past_keys", "past_values"]
    with torch.no_grad():
        program = torch.onnx.export(module, _example_inputs(model.config), dynamo=True, opset_version=OPSET,
                                    input_names=names, output_names=["logits", "present_keys", "present_values"],
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
    tmp = out / "model.onnx.tmp"
    program.save(str(tmp), external_data=False)
    tmp.rename(path)
    return path


def quantize_onnx(fp32: Path) -> Path:
    """fp32 .onnx -> the same folder's model.int8.onnx, dynamic int8 weights (made once)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    path = fp32.with_name("model.int8.onnx")
    if not path.is_file():
        tmp = fp32.with_name("model.int8.tmp.onnx")
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
        tmp.rename(path)
    return path


def ort_session(path: Path, threads: int = 2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_steps(session, config, prompt: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """Greedy decoding through the exported graph: prefill (P = 0), then yields each step's tokens [B, 1]."""
    B, T = prompt.shape
    L, H, D = config.n_layer, config.n_head, config.n_embd // config.n_head
    keys = values = np.zeros((L, B, H, 0, D), np.float32)
    ids, positions = prompt.astype(np.int64), np.broadcast_to(np.arange(T, dtype=np.int64), (B, T))
    for step in range(n + 1):
        past = keys.shape[3]
        logits, keys, values = session.run(None, {
            "input_ids": ids, "position_ids": np.ascontiguousarray(positions),
            "attention_mask": np.ones((B, past + ids.shape[1]), np.int64), "past_keys": keys, "past_values": values})
        if step == n:
            return
        ids = logits.argmax(-1)[:, None]                                       # [B, 1]
        yield ids
        positions = np.full((B, 1), keys.shape[3], np.int64)                     # the next position


def check_onnx(ckpt: Path, session, new: int = 12) -> tuple[list[int], list[int]]:
    """Greedy tokens of the exported graph and of transformers' generate for one random prompt (equal if
    the export is right)."""
    import torch
    model = load_hf(ckpt)
    prompt = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, 7))
    ours = [int(t[0, 0]) for t in ort_steps(session, model.config, prompt, new)]
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             attention_mask=torch.ones(1, 7, dtype=torch.int64), pad_token_id=0)
    return ours, ref[0, 7:].tolist()


def convert_ct2(ckpt: Path, out: Path) -> Path:
    """ckpt -> out/ (a CTranslate2 float32 model), without a tokenizer: see the module docstring. Made once."""
    import torch
    from ctranslate2.converters.transformers import GPT2Loader
    if (out / "model.bin").is_file():
        return out
    model = load_hf(ckpt)
    with torch.no_grad():
        loader = GPT2Loader()
        spec = loader.get_model_spec(model)
        tokens = [f"t{i}" for i in range(model.config.vocab_size)]
        spec.config.bos_token = spec.config.eos_token = spec.config.unk_token = tokens[-1]
        loader.set_vocabulary(spec, tokens)
        spec.validate()
        spec.optimize(quantization=None)
        tmp = out.with_name(out.name + ".tmp")                   # renamed into place once complete
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        spec.save(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def ct2_generator(folder: Path, threads: int = 2):
    import ctranslate2
    return ctranslate2.Generator(str(folder), device="cpu", intra_threads=threads, inter_threads=1,
                                 compute_type="float32")


def ct2_start(prompt: np.ndarray) -> list[list[str]]:
    return [[f"t{int(t)}" for t in row] for row in prompt]


def ct2_tokens(generator, prompt: np.ndarray, n: int) -> np.ndarray:
    """CTranslate2's greedy tokens [B, n] after prompt [B, P] (the prompt prefilled at once; never stops early)."""
    out = generator.generate_batch(ct2_start(prompt), max_length=n, min_length=n, beam_size=1,
                                   include_prompt_in_result=False)
    return np.array([r.sequences_ids[0] for r in out], np.int64)


class Ct2Slices:
    """CTranslate2's decode timed slice by slice through its plain generate_batch: a slice of `steps` decode
    steps after the k tokens made so far takes generate_batch(prompt + those k tokens, steps + 1 tokens) minus
    generate_batch(the same, 1 token), back to back -- the prefill of the prefix and its first step cancel, and
    the steps run at the cache lengths they would reach in one long generation. (Stepping CTranslate2 one
    token per next() through generate_batch's callback, paused between steps, was tried: its OpenMP team
    sleeps and wakes at every step, 10-100x slower on this loaded 2-core machine, so not its real speed.)
    `tokens` [B, n]: its greedy tokens from one plain generate_batch, untimed."""

    def __init__(self, generator, prompt: np.ndarray, n: int) -> None:
        self.generator, self.prompt = generator, prompt
        self.tokens = ct2_tokens(generator, prompt, n)
        self.made = 1                                           # the first token comes with the prefill

    def _seconds(self, start: list[list[str]], n: int) -> float:
        t = time.perf_counter()
        self.generator.generate_batch(start, max_length=n, min_length=n, beam_size=1, include_prompt_in_result=False)
        return time.perf_counter() - t

    def __call__(self, steps: int) -> float:
        start = ct2_start(np.concatenate([self.prompt, self.tokens[:, :self.made - 1]], axis=1))
        for _ in range(3):                                      # a difference of two times: on a busy
            seconds = self._seconds(start, steps + 1) - self._seconds(start, 1)   # machine it can come out <= 0
            if seconds > 0:
                break
        self.made += steps
        return max(seconds, 1e-9)
