"""Checkpoints: safetensors in NumPy (against the safetensors package), Hugging Face GPT-2 folders in
and out (against transformers), hub-cache name resolution, and every kind of broken file."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from numgpt import GPTConfig, NumgptError
from numgpt.formats.hf import (DECODE_MATRICES, LINEAR_WEIGHTS, checkpoint_summary, load_checkpoint, load_config, load_tokenizer,
                               save_checkpoint)
from numgpt.formats.hub import hf_cache_dir, resolve_model
from numgpt.formats.safetensors import read_safetensors, read_transposed, write_safetensors
from numgpt.model import forward
from numgpt.params import init_params, param_shapes

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_tiny"


@pytest.fixture
def tiny_folder(tmp_path):
    """A copy of the golden tiny checkpoint that a test may break."""
    return Path(shutil.copytree(GOLDEN, tmp_path / "ckpt"))


def hf_state(ckpt):
    return {k: v.numpy() for k, v in ckpt.model.state_dict().items()}


def assert_one_line_error(call, *patterns):
    with pytest.raises(NumgptError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    for p in patterns:
        assert p in message, message
    return message


# ---------------------------------------------------------------- safetensors

def test_write_then_read_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 4), dtype=np.float32), "b.c": np.arange(5, dtype=np.float32),
               "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32)}
    write_safetensors(tmp_path / "x.safetensors", tensors, metadata={"format": "pt"})
    theirs = st.load_file(tmp_path / "x.safetensors")
    assert theirs.keys() == tensors.keys()
    for k in tensors:
        np.testing.assert_array_equal(theirs[k], tensors[k])
    st.save_file({k: np.asarray(v * 2) for k, v in tensors.items()}, tmp_path / "y.safetensors", metadata={"m": "1"})
    ours, meta = read_safetensors(tmp_path / "y.safetensors")
    assert meta == {"m": "1"}
    for k in tensors:
        np.testing.assert_array_equal(ours[k], tensors[k] * 2)
        assert ours[k].dtype == np.float32 and ours[k].shape == tensors[k].shape


def test_float16_bfloat16_float64_files_load_as_float32(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    x = torch.tensor([[1.0, -2.5, 3.140625], [0.0, 65504.0, -1e-3]])
    st.save_file({"h": x.half(), "b": x.bfloat16(), "d": x.double()}, tmp_path / "m.safetensors")
    got, _ = read_safetensors(tmp_path / "m.safetensors")
    for name, t in (("h", x.half()), ("b", x.bfloat16()), ("d", x.double())):
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], t.float().numpy())   # float32 holds them exactly


def test_float32_tensors_are_zero_copy_read_only_memory_maps(tiny_folder):
    _, params = load_checkpoint(tiny_folder)
    for array in params.values():
        assert not array.flags.writeable and not array.flags.owndata
        assert type(array) is np.ndarray    # plain arrays: no np.memmap subclass overhead in the hot path


def test_read_into_memory_equals_memory_map(tiny_folder):
    _, mapped = load_checkpoint(tiny_folder)
    _, loaded = load_checkpoint(tiny_folder, mmap=False)
    for name, array in loaded.items():
        assert array.flags.writeable and array.dtype == np.float32
        np.testing.assert_array_equal(array, mapped[name])


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "in-memory"])
def test_inference_layout_holds_the_same_values_longer_side_contiguous(tiny_folder, mmap):
    config, plain = load_checkpoint(tiny_folder)
    _, params = load_checkpoint(tiny_folder, for_inference=True, mmap=mmap)
    assert list(params) == list(plain)
    for name, array in params.items():
        assert array.dtype == np.float32 and array.shape == plain[name].shape
        np.testing.assert_array_equal(array, plain[name])
        if name.endswith(DECODE_MATRICES):                 # in memory, the longer side contiguous
            rows, cols = array.shape
            stored = array.T if rows >= cols else array
            assert stored.flags.c_contiguous
            assert array.flags.writeable == (name not in params.panels)   # with panels (panels.py): read-only
        elif array.ndim == 2:                              # wpe: as load_checkpoint(mmap=mmap)
            assert array.flags.writeable != mmap
        else:                                              # biases and gains: read into memory
            assert array.flags.writeable
    assert sum(name.endswith(DECODE_MATRICES) for name in params) == 4 * config.n_layer + 1
    # the tiny model's shapes give both orientations: c_attn/c_fc [in, out] as stored, c_proj and wte turned
    assert params["h.0.attn.c_attn.weight"].flags.c_contiguous and params["wte.weight"].T.flags.c_contiguous


def test_inference_layout_saves_the_same_file(tiny_folder, tmp_path):
    config, plain = load_checkpoint(tiny_folder)
    _, params = load_checkpoint(tiny_folder, for_inference=True)
    save_checkpoint(tmp_path / "a", config, plain)
    save_checkpoint(tmp_path / "b", config, params)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_read_transposed_converts_half_bfloat16_and_double(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    x = torch.randn(300, 7, generator=torch.Generator().manual_seed(0))   # odd sizes: partial tiles
    wide = x.T.contiguous()                                               # [7, 300]: kept as stored
    kinds = {"a": torch.float16, "b": torch.bfloat16, "c": torch.float64, "d": torch.float32}
    st.save_file({f"{k}{shape}.mlp.c_fc.weight": t.to(dtype) for k, dtype in kinds.items()
                  for shape, t in (("tall", x), ("wide", wide))}, tmp_path / "m.safetensors")
    got, _ = read_safetensors(tmp_path / "m.safetensors", decode_layout=LINEAR_WEIGHTS)
    for k, dtype in kinds.items():
        tall, flat = got[f"{k}tall.mlp.c_fc.weight"], got[f"{k}wide.mlp.c_fc.weight"]
        assert tall.dtype == np.float32 and tall.shape == (300, 7) and tall.T.flags.c_contiguous
        assert flat.dtype == np.float32 and flat.shape == (7, 300) and flat.flags.c_contiguous
        np.testing.assert_array_equal(tall, x.to(dtype).float().numpy())
        np.testing.assert_array_equal(flat, wide.to(dtype).float().numpy())
    np.testing.assert_array_equal(read_transposed(np.arange(12.0).reshape(3, 4), "F64", tile=2),
                                  np.arange(12.0).reshape(3, 4))



def test_decode_layout_read_in_runs_of_rows_gives_the_same_tensors(tmp_path, monkeypatch):
    """Big tensors are read a run of rows at a time (READ_RUN_BYTES): runs of 1, 3 and all rows agree."""
    import numgpt.formats.safetensors as S
    rng = np.random.default_rng(0)
    tensors = {"h.0.mlp.c_fc.weight": rng.standard_normal((37, 11)).astype(np.float32),      # transposed
               "h.0.mlp.c_proj.weight": rng.standard_normal((5, 41)).astype(np.float32)}     # as stored
    write_safetensors(tmp_path / "m.safetensors", tensors)
    for run_bytes in (1, 3 * 11 * 4, 1 << 24):
        monkeypatch.setattr(S, "READ_RUN_BYTES", run_bytes)
        got, _ = read_safetensors(tmp_path / "m.safetensors", decode_layout=LINEAR_WEIGHTS)
        for name, want in tensors.items():
            np.testing.assert_array_equal(got[name], want)
        assert got["h.0.mlp.c_fc.weight"].T.flags.c_contiguous and got["h.0.mlp.c_proj.weight"].flags.c_contiguous


PEAK_SCRIPT = """
import sys, numpy as np, numgpt
from numgpt import KVCache, forward, load_checkpoint
config, params = load_checkpoint(sys.argv[1], for_inference=True)
cache = KVCache.allocate(config, 1, 33)
forward(params, config, np.arange(32)[None], cache=cache)
forward(params, config, np.array([[5]]), cache=cache)
hwm = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
print(hwm * 1024 / sum(a.nbytes for a in params.values()))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_loading_124m_for_inference_peaks_below_1_25x_its_weights(hf_gpt2_124m_ckpt):
    """load + a 32-token prefill + one decode step, in a fresh process: its high-water mark (VmHWM)
    stays under 1.25x the weights (a whole-tensor scratch for wte had put it at 1.38x)."""
    import subprocess
    ratio = float(subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(hf_gpt2_124m_ckpt.folder)], capture_output=True,
                                 text=True, check=True).stdout)
    assert 1.0 < ratio < 1.25, ratio

# ---------------------------------------------------------------- Hugging Face folders

def test_load_transformers_folder_equals_its_state_dict(hf_small_ckpt):
    config, params = load_checkpoint(hf_small_ckpt.folder)
    assert config.to_hf_dict()["n_embd"] == hf_small_ckpt.config.n_embd
    assert (config.n_layer, config.n_head, config.vocab_size, config.n_positions) == (2, 4, 300, 64)
    state = hf_state(hf_small_ckpt)
    assert params.keys() == param_shapes(config).keys()
    for name, array in params.items():
        np.testing.assert_array_equal(array, state["transformer." + name])


def test_save_is_loadable_by_transformers_with_equal_logits(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = GPTConfig(vocab_size=120, n_positions=40, n_embd=32, n_layer=3, n_head=4, layer_norm_epsilon=1e-6)
    params = init_params(config, np.random.default_rng(0))
    save_checkpoint(tmp_path / "out", config, params)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = np.random.default_rng(1).integers(0, 120, (2, 25))
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    # float32 sums in different orders on a 3-layer model: ~1e-6; a wrong weight would be off by > 1e-2
    np.testing.assert_allclose(forward(params, config, ids, all_logits=True), ref, atol=1e-5, rtol=0)
    config2, params2 = load_checkpoint(tmp_path / "out")
    assert config2 == config
    for k in params:
        np.testing.assert_array_equal(params2[k], params[k])


def test_save_over_the_folder_it_was_loaded_from(tiny_folder):
    """The loaded params are memory maps of model.safetensors; saving writes a new file and renames it."""
    config, params = load_checkpoint(tiny_folder)
    expected = {k: np.array(v) for k, v in params.items()}
    save_checkpoint(tiny_folder, config, params)
    _, again = load_checkpoint(tiny_folder)
    for k in expected:
        np.testing.assert_array_equal(again[k], expected[k])


@pytest.mark.parametrize("for_inference", [False, True], ids=["as-stored", "for-inference"])
def test_sharded_checkpoint(hf_small_ckpt, tmp_path, for_inference):
    hf_small_ckpt.model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _, params = load_checkpoint(tmp_path, for_inference=for_inference)
    state = hf_state(hf_small_ckpt)
    for name, array in params.items():
        np.testing.assert_array_equal(array, state["transformer." + name])


def rewrite_weights(folder, edit):
    """Load the folder's HF-named tensors, apply edit(dict), write them back."""
    tensors, meta = read_safetensors(folder / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    edit(tensors)
    write_safetensors(folder / "model.safetensors", tensors, metadata=meta)


def test_tied_lm_head_and_attention_buffers_are_ignored(tiny_folder):
    config, before = load_checkpoint(tiny_folder)

    def add(t):
        t["lm_head.weight"] = t["transformer.wte.weight"].copy()
        t["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))
        t["transformer.h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    rewrite_weights(tiny_folder, add)
    _, after = load_checkpoint(tiny_folder)
    assert after.keys() == before.keys()


def test_untied_lm_head_is_refused(tiny_folder):
    rewrite_weights(tiny_folder, lambda t: t.__setitem__("lm_head.weight", t["transformer.wte.weight"] + 1))
    assert_one_line_error(lambda: load_checkpoint(tiny_folder), "lm_head.weight differs", str(tiny_folder))


def test_pytorch_bin_only_says_how_to_convert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPTConfig().to_hf_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    msg = assert_one_line_error(lambda: load_checkpoint(tmp_path), "pytorch_model.bin", "safe_serialization=True")
    assert "save_pretrained" in msg


# ---------------------------------------------------------------- broken files

def break_header_length(f):
    data = bytearray(f.read_bytes())
    data[:8] = (10 ** 9).to_bytes(8, "little")
    f.write_bytes(bytes(data))


def break_header_json(f):
    data = bytearray(f.read_bytes())
    data[8:12] = b"}}}{"
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, patterns", [
    (break_header_length, ["model.safetensors", "header length"]),
    (break_header_json, ["model.safetensors", "not JSON"]),
    (lambda f: f.write_bytes(f.read_bytes()[:-100]), ["model.safetensors", "truncated"]),
    (lambda f: f.write_bytes(b"\x01\x02"), ["model.safetensors", "not a safetensors file"]),
], ids=["header-length", "header-json", "truncated-data", "too-short"])
@pytest.mark.parametrize("for_inference", [False, True], ids=["as-stored", "for-inference"])
def test_corrupt_safetensors_raise(tiny_folder, damage, patterns, for_inference):
    damage(tiny_folder / "model.safetensors")
    assert_one_line_error(lambda: load_checkpoint(tiny_folder, for_inference=for_inference), *patterns)


def test_header_offsets_that_disagree_with_shape_raise(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "x.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    assert_one_line_error(lambda: read_safetensors(tmp_path / "x.safetensors"), "'w'", "need 24")


def test_non_float_tensor_raises(tiny_folder):
    tensors, _ = read_safetensors(tiny_folder / "model.safetensors")
    header = {k: {"dtype": "F32", "shape": list(v.shape), "data_offsets": None} for k, v in tensors.items()}
    offset, blobs = 0, []
    for k, v in tensors.items():
        dtype, blob = ("I64", v.astype(np.int64).tobytes()) if k.endswith("wpe.weight") else ("F32", v.tobytes())
        header[k].update(dtype=dtype, data_offsets=[offset, offset + len(blob)])
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    (tiny_folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    assert_one_line_error(lambda: load_checkpoint(tiny_folder), "transformer.wpe.weight", "I64")


def test_missing_tensor_raises(tiny_folder):
    rewrite_weights(tiny_folder, lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    assert_one_line_error(lambda: load_checkpoint(tiny_folder), "missing", "h.1.mlp.c_fc.weight")


def test_wrong_shape_raises(tiny_folder):
    rewrite_weights(tiny_folder, lambda t: t.__setitem__("transformer.h.0.attn.c_proj.weight", np.zeros((8, 9), np.float32)))
    assert_one_line_error(lambda: load_checkpoint(tiny_folder), "h.0.attn.c_proj.weight", "[8, 9]", "[8, 8]")


@pytest.mark.parametrize("change, patterns", [
    ({"n_layer": 3}, ["missing", "h.2."]),
    ({"n_layer": 1}, ["unexpected tensors", "h.1."]),
    ({"n_embd": 16, "n_head": 2}, ["shape"]),
    ({"vocab_size": 65}, ["wte.weight", "[64, 8]", "[65, 8]"]),
], ids=["more-layers", "fewer-layers", "wider", "vocab"])
def test_config_that_disagrees_with_weights_raises(tiny_folder, change, patterns):
    d = json.loads((tiny_folder / "config.json").read_text())
    d.update(change)
    (tiny_folder / "config.json").write_text(json.dumps(d))
    assert_one_line_error(lambda: load_checkpoint(tiny_folder), str(tiny_folder), *patterns)


SHAPE = '"vocab_size": 50257, "n_positions": 1024, "n_layer": 2'   # with n_embd and n_head: a whole shape


@pytest.mark.parametrize("text, pattern", [
    ("{not json", "bad config"),
    ("[1, 2]", "not an object"),
    ('{' + SHAPE + ', "n_embd": 10, "n_head": 3}', "divisible"),
    ('{"model_type": "llama"}', "llama"),
    ('{' + SHAPE.replace('"n_layer": 2', '"n_layer": -1') + ', "n_embd": 8, "n_head": 2}', "GPTConfig.n_layer must be >= 1, got -1"),
    ('{' + SHAPE.replace('"n_layer": 2', '"n_layer": "4"') + ', "n_embd": 8, "n_head": 2}', "n_layer must be a whole number (an int), got '4' (str)"),
    ('{' + SHAPE + '}', "n_embd, n_head missing"),
], ids=["not-json", "list", "indivisible", "other-model", "negative", "string", "shape-missing"])
def test_bad_config_json_raises(tiny_folder, text, pattern):
    (tiny_folder / "config.json").write_text(text)
    assert_one_line_error(lambda: load_config(tiny_folder), "config.json", pattern)


def test_missing_files_raise(tmp_path):
    assert_one_line_error(lambda: load_checkpoint(tmp_path), "config.json")
    (tmp_path / "config.json").write_text(json.dumps(GPTConfig().to_hf_dict()))
    assert_one_line_error(lambda: load_checkpoint(tmp_path), "model.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "a.safetensors"}}))
    assert_one_line_error(lambda: load_checkpoint(tmp_path), "a.safetensors")


# ---------------------------------------------------------------- tokenizers

def test_tokenizer_from_folder_or_builtin_gpt2(tmp_path):
    from numgpt.tokenizer import Tokenizer
    gpt2 = Tokenizer.gpt2()
    assert load_tokenizer(tmp_path, GPTConfig()).encode("Hello world") == gpt2.encode("Hello world")
    gpt2.save(tmp_path)
    tok = load_tokenizer(tmp_path, GPTConfig())
    assert tok.encode("Hello world") == gpt2.encode("Hello world") == [15496, 995]
    assert_one_line_error(lambda: load_tokenizer(tmp_path, GPTConfig(vocab_size=1000)), "50257", "1000")
    assert_one_line_error(lambda: load_tokenizer(tmp_path / "none", GPTConfig(vocab_size=1000)), "vocab_size 1000")


def test_save_with_tokenizer_round_trips(tmp_path):
    from numgpt.tokenizer import Tokenizer
    config = GPTConfig(vocab_size=50257, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    save_checkpoint(tmp_path, config, init_params(config, np.random.default_rng(0)), tokenizer=Tokenizer.gpt2())
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    assert load_tokenizer(tmp_path, config).encode(" numgpt") == Tokenizer.gpt2().encode(" numgpt")


# ---------------------------------------------------------------- names -> folders

def fake_hub_cache(cache, repo_id, commit="abc123"):
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    shutil.copytree(GOLDEN, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    return snapshot


def test_resolve_existing_folder_as_is(tiny_folder, tmp_path):
    assert resolve_model(tiny_folder, cache_dir=tmp_path / "empty", download=False) == tiny_folder


def test_resolve_a_training_run_folder_to_its_best_then_latest_checkpoint(tiny_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_folder, run / "latest")
    assert resolve_model(run, cache_dir=tmp_path / "empty", download=False) == run / "latest"
    shutil.copytree(tiny_folder, run / "best")
    assert resolve_model(run, cache_dir=tmp_path / "empty", download=False) == run / "best"
    load_checkpoint(resolve_model(run, cache_dir=tmp_path / "empty", download=False))
    recipe = tmp_path / "recipe"                  # `numgpt recipe chat`'s folder: its model (was "config.json: missing")
    shutil.copytree(tiny_folder, recipe / "model")
    assert resolve_model(recipe, cache_dir=tmp_path / "empty", download=False) == recipe / "model"
    with pytest.raises(NumgptError, match="the model name is empty"):       # '' was the current folder
        resolve_model("", cache_dir=tmp_path / "empty", download=False)


def test_a_folder_that_is_no_checkpoint_says_what_it_is(tiny_folder, tmp_path):
    """A config.json that is a folder was "missing"; a LoRA adapter's folder was not said to be one."""
    odd = tmp_path / "odd"
    (odd / "config.json").mkdir(parents=True)
    with pytest.raises(NumgptError, match="config.json: is a folder, not a file"):
        load_checkpoint(odd)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(NumgptError, match=f"{adapter}: a LoRA adapter, not a model; load its base with the adapter"):
        load_checkpoint(adapter)


def test_resolve_names_in_the_hub_cache(tmp_path):
    cache = tmp_path / "hub"
    snapshot = fake_hub_cache(cache, "openai-community/gpt2")
    assert resolve_model("gpt2", cache_dir=cache, download=False) == snapshot
    assert resolve_model("openai-community/gpt2", cache_dir=cache, download=False) == snapshot
    old = fake_hub_cache(cache, "gpt2-medium", commit="def456")       # pre-2024 cache layout, no org
    assert resolve_model("gpt2-medium", cache_dir=cache, download=False) == old
    load_checkpoint(resolve_model("gpt2", cache_dir=cache, download=False))


def test_resolve_missing_model_without_download(tmp_path):
    msg = assert_one_line_error(lambda: resolve_model("gpt2-large", cache_dir=tmp_path, download=False),
                                "gpt2-large", "hf download openai-community/gpt2-large")
    assert str(tmp_path) in msg
    assert_one_line_error(lambda: resolve_model("./no/such/dir", cache_dir=tmp_path), "no such folder")


def test_a_mistyped_local_folder_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    for typo, hint in [("runs_mine", "no such folder"), ("runs/mnie", "did you mean runs/mine"),
                       ("runs/mine/bset", "no such folder")]:
        msg = assert_one_line_error(lambda: resolve_model(typo, cache_dir=tmp_path / "hub"), typo, hint)
        assert "download" not in msg                  # only names that look like hub ids get that advice
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(lambda: resolve_model("afile", cache_dir=tmp_path / "hub"), "is a file")


def test_resolve_download_failure_is_one_line(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def offline(repo_id, **kw):
        calls.append((repo_id, kw))
        raise OSError("no network")
    monkeypatch.setattr(hub, "snapshot_download", offline)
    assert_one_line_error(lambda: resolve_model("gpt2", cache_dir=tmp_path), "download", "OSError")
    assert calls[0][0] == "openai-community/gpt2" and "merges.txt" in calls[0][1]["allow_patterns"]


def test_resolve_without_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)   # import now raises ImportError
    assert_one_line_error(lambda: resolve_model("gpt2", cache_dir=tmp_path), "huggingface_hub is not installed")


def test_hf_cache_dir_from_environment(tmp_path):
    assert hf_cache_dir({"HF_HUB_CACHE": str(tmp_path)}) == tmp_path
    assert hf_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "hub"
    assert hf_cache_dir({}).parts[-3:] == (".cache", "huggingface", "hub")


def test_summary_reads_headers_only(tiny_folder):
    s = checkpoint_summary(tiny_folder)
    config = load_config(tiny_folder)
    assert s["config"] == config
    assert s["n_params"] == sum(int(np.prod(v)) for v in param_shapes(config).values())
    assert s["weight_files"]["model.safetensors"]["dtypes"] == ["F32"]
    assert s["weight_files"]["model.safetensors"]["bytes"] == (tiny_folder / "model.safetensors").stat().st_size
    assert s["tokenizer_files"] == []


def test_save_float16_halves_the_file_and_loads_as_float32(tmp_path):
    """The built-in model ships in float16: the safetensors package must read it as F16, numgpt must
    load it back as the float16-rounded float32 values."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    config = GPTConfig(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    params = init_params(config, np.random.default_rng(0))
    save_checkpoint(tmp_path / "f32", config, params)
    save_checkpoint(tmp_path / "f16", config, params, dtype="F16")
    theirs = safetensors_numpy.load_file(str(tmp_path / "f16" / "model.safetensors"))
    assert theirs["transformer.wte.weight"].dtype == np.float16
    n_params = sum(v.size for v in params.values())
    for name, bytes_per_value in (("f32", 4), ("f16", 2)):
        raw = (tmp_path / name / "model.safetensors").read_bytes()
        data_bytes = len(raw) - 8 - int.from_bytes(raw[:8], "little")   # file = length + header + data
        assert data_bytes == bytes_per_value * n_params
    _, loaded = load_checkpoint(tmp_path / "f16")
    for name, value in params.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], value.astype(np.float16).astype(np.float32))


def test_info_refuses_a_truncated_weights_file(tiny_folder, capsys):
    from numgpt.cli import main
    f = tiny_folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert_one_line_error(lambda: checkpoint_summary(tiny_folder), "truncated file")
    assert main(["info", "--model", str(tiny_folder)]) == 2
    assert "truncated file" in capsys.readouterr().err


def test_info_says_when_config_and_weights_disagree(tmp_path, capsys):
    """info reads headers only; a config.json whose shapes the weights contradict printed the config's
    parameter count as if it were the model's. It now says what loading would refuse."""
    import shutil
    import numgpt
    from numgpt.cli import main
    folder = tmp_path / "m"
    shutil.copytree(numgpt.load().folder, folder)
    assert checkpoint_summary(folder)["disagreement"] is None
    config = json.loads((folder / "config.json").read_text())
    for change, words in (({"n_embd": config["n_embd"] // 2}, "wte.weight has shape [1024, 256] where config.json "
                                                               "implies [1024, 128]"),
                          ({"n_layer": config["n_layer"] + 1}, "the weights are missing 12 tensors of the config")):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        assert checkpoint_summary(folder)["disagreement"].startswith(words)
        assert main(["info", "--model", str(folder)]) == 0
        assert f"config.json and the weights disagree: {words}" in capsys.readouterr().out
        assert main(["generate", "--model", str(folder), "-n", "1", "x"]) == 2          # what loading refuses
        assert "config.json and the weights" in capsys.readouterr().err


def test_an_unknown_dtype_is_named(tiny_folder):
    f = tiny_folder / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "Q4"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    assert len(text) == n                                        # same header length: only the dtype changed
    f.write_bytes(raw[:8] + text + raw[8 + n:])
    assert_one_line_error(lambda: load_checkpoint(tiny_folder), name, "'Q4'", "does not define")


def test_a_tokenizer_of_another_size_is_refused_at_load(tmp_path):
    import numgpt
    from numgpt.tokenizer import train_bpe
    folder = Path(shutil.copytree(Path(numgpt.__file__).parent / "assets" / "model", tmp_path / "m"))
    small = train_bpe("ROMEO: But soft, what light through yonder window breaks? " * 5, vocab_size=291)
    small.save(folder, overwrite=True)                           # a 291-token tokenizer beside a 1024-token model
    assert_one_line_error(lambda: numgpt.load(folder), "291 tokens", "vocab_size is 1024", "another model")
