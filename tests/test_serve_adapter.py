"""numgpt serve --model BASE --adapter DIR (issue 21 item 4's `--model BASE --adapter DIR`, on the server): the
base is served with the LoRA adapter merged, as `numgpt generate --adapter` runs it; an adapter made for
another base is refused at start in one line. A real `numgpt serve` on a free loopback port, driven by
the official openai client."""

import subprocess

import numpy as np
import pytest
from references import reference
from test_serve import NUMGPT, Server, cli

from numgpt.formats import load_checkpoint, save_checkpoint
from numgpt.lm import builtin_model_folder
from numgpt.posttrain import lora as L

openai = reference("openai")
pytest.importorskip("numgpt.serve", reason="the serve extra is not installed")

PROMPTS = ("ROMEO:", "First Citizen:\nWe are")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A rank-4 adapter of the built-in model whose B is not zero (a fresh one changes nothing)."""
    config, params = load_checkpoint(builtin_model_folder(), mmap=False)
    lora = L.LoraConfig(rank=4, alpha=8, targets=("c_attn", "mlp.c_fc"))
    rng = np.random.default_rng(0)
    tensors = L.init_adapters(config, lora, rng)
    for name in tensors:
        if name.endswith(L.B):
            tensors[name] = (0.05 * rng.standard_normal(tensors[name].shape)).astype(np.float32)
    return L.save_adapter(tmp_path_factory.mktemp("serve_adapter") / "adapter", {**params, **tensors}, config, lora,
                          base="builtin")


@pytest.fixture(scope="module")
def server(adapter):
    s = Server("--adapter", str(adapter), "--model-name", "numgpt", key=None)
    yield s
    assert s.stop() == 0
    assert not any("Traceback" in line for line in s.log), "".join(s.log)


def test_served_greedy_text_equals_generate_with_the_adapter(server, adapter):
    """The server's greedy text is `numgpt generate --adapter DIR --greedy`'s, and not the plain base's
    (the adapter is really in)."""
    changed = 0
    for prompt in PROMPTS:
        r = server.client.completions.create(model="numgpt", prompt=prompt, max_tokens=30, temperature=0)
        want = cli("generate", "--adapter", str(adapter), "--greedy", "--max-new-tokens", "30", prompt)
        assert r.choices[0].text == want.removesuffix("\n")
        changed += want != cli("generate", "--greedy", "--max-new-tokens", "30", prompt)
    assert changed > 0
    card = server.http.get("/v1/models").json()["data"][0]
    assert card["id"] == "numgpt" and card["adapter"] == str(adapter)     # a client can tell the adapter is in


def test_an_adapter_for_another_base_is_refused_at_start_in_one_line(adapter, tmp_path):
    config, params = load_checkpoint(builtin_model_folder(), mmap=False)
    from numgpt import load
    other = {k: v + np.float32(0.01) if k == "ln_f.bias" else v for k, v in params.items()}   # same shapes
    folder = save_checkpoint(tmp_path / "other", config, other, tokenizer=load().tokenizer)
    for args, message in ((["--model", str(folder), "--adapter", str(adapter)], "trained on another base model"),
                          (["--adapter", str(tmp_path / "nowhere")], "nowhere: no such folder; pass an adapter folder"),
                          (["--adapter", str(adapter / "adapter_config.json")],
                           "adapter_config.json: a file, not a folder; pass an adapter folder")):
        out = subprocess.run(NUMGPT + ["serve", "--port", "0", *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2
        err = out.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("numgpt: error:") and message in err, err
