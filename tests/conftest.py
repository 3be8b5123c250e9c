"""Shared test fixtures: small checkpoints and tokenizer folders, made in temporary directories."""

import types

import pytest
from references import REFERENCES, importable, missing_references


def pytest_addoption(parser):
    parser.addoption("--allow-missing-references", action="store_true",
                     help="run without some reference libraries (torch, transformers, tiktoken, ...): the tests "
                          "that need one are skipped, each with the reason; by default a missing one fails the run")


def pytest_configure(config):
    """A reference the `test` extra installs being missing fails the run, instead of silently skipping
    what the tests exist to check (pass --allow-missing-references to run the rest).

    Ctrl-C as a terminal delivers it, whatever started pytest: a shell starts a background job (`nohup
    bash .ci/run &`) with SIGINT ignored, Python then keeps it ignored, and every process a test starts
    inherits that, so the tests of Ctrl-C saw nothing (five failed so). Python's own handler here; the
    processes the tests start get the default disposition back at exec."""
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    missing = missing_references()
    if missing and not config.getoption("--allow-missing-references"):
        raise pytest.UsageError(
            f"reference libraries missing: {', '.join(missing)}; install them with pip install -e '.[test]' "
            f"({', '.join(REFERENCES[m] for m in missing)}), or pass --allow-missing-references to skip the "
            "tests that need them")


# ---- generation, scoring, inference CLI (issue 3) -----------------------------------------------------

def _hf_checkpoint(tmp_path_factory, name, seed, **config):
    """A randomly initialised transformers GPT2LMHeadModel saved with save_pretrained (config.json +
    model.safetensors) into a tmp folder; returns folder, the torch model (eval mode) and its config."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(**config)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    return types.SimpleNamespace(folder=folder, model=model, config=hf_config)


@pytest.fixture(scope="session")
def hf_tiny_vocab_ckpt(tmp_path_factory):
    """Small vocabulary, 128 positions: for id-level generation against transformers. Init scaled up
    (initializer_range 0.3) so that logits are far from ties and greedy paths are robust to float rounding.
    eos = bos = 299 (the last id), so stopping at eos is exercised."""
    return _hf_checkpoint(tmp_path_factory, "tiny_vocab", 0, vocab_size=300, n_positions=128, n_embd=32,
                          n_layer=2, n_head=4, initializer_range=0.3, bos_token_id=299, eos_token_id=299)


@pytest.fixture(scope="session")
def hf_gpt2_vocab_ckpt(tmp_path_factory):
    """GPT-2's 50257-token vocabulary (so GPT-2's tokenizer applies) with a narrow model (n_embd 16) to
    stay fast; 256 positions; init scaled up as above."""
    return _hf_checkpoint(tmp_path_factory, "gpt2_vocab", 1, vocab_size=50257, n_positions=256, n_embd=16,
                          n_layer=2, n_head=2, initializer_range=0.2)


@pytest.fixture(scope="session")
def hf_short_context_ckpt(tmp_path_factory):
    """GPT-2's vocabulary with only 32 positions: texts of ~200 tokens need the strided perplexity."""
    return _hf_checkpoint(tmp_path_factory, "short_context", 2, vocab_size=50257, n_positions=32, n_embd=16,
                          n_layer=2, n_head=2, initializer_range=0.1)

@pytest.fixture
def torch_one_thread():
    """Run torch on one thread during the test. Subtle: on a loaded 2-core machine torch's default two
    OpenMP threads spin-wait on each other and a tiny GPT-2 forward takes ~190 ms instead of ~3 ms.
    Without torch it does nothing: the tests that need torch skip themselves (references.py)."""
    if not importable("torch"):
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ---- end of generation, scoring, inference CLI block ---------------------------------------------------


# ---- model, KV cache, checkpoints (issue 3) -------------------------------------------------------------

@pytest.fixture(scope="session")
def hf_gpt2_124m_ckpt(tmp_path_factory):
    """A 124M-shaped (GPT-2 small) random transformers checkpoint, made once per session (~10 s).
    initializer_range 0.05 (not 0.02): logits spread out so greedy argmaxes are not near-ties, while
    float32 differences between implementations stay ~1e-5."""
    return _hf_checkpoint(tmp_path_factory, "gpt2_124m", 3, initializer_range=0.05)


@pytest.fixture(scope="session")
def hf_small_ckpt(tmp_path_factory):
    """A small random transformers checkpoint (2 layers, 4 heads, 48 channels, 300 tokens, 64 positions)
    for the model and checkpoint tests; init scaled up (0.2) so that greedy paths have no near-ties."""
    return _hf_checkpoint(tmp_path_factory, "small", 4, vocab_size=300, n_positions=64, n_embd=48,
                          n_layer=2, n_head=4, initializer_range=0.2, bos_token_id=0, eos_token_id=0)

# ---- end of model, KV cache, checkpoints block ---------------------------------------------------------


# ---- tokenizer (issue 2) --------------------------------------------------------------------------------

import json  # noqa: E402 (each block keeps its imports)
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"  # ../shared/data from the repository
GPT2_FILES = REPO / "numgpt" / "assets" / "gpt2"


@pytest.fixture(scope="session")
def gpt2_tok():
    """numgpt's GPT-2 tokenizer (built-in vocabulary), shared: it only caches pieces."""
    from numgpt import Tokenizer
    return Tokenizer.gpt2()


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    """The reference: tiktoken's gpt2 encoding, built from the same two files with tiktoken's own recipe
    (load.data_gym_to_mergeable_bpe_ranks), since tiktoken cannot download here."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from numgpt.tokenizer import GPT2_SPLIT_PATTERN
    folder = GPT2_FILES
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly; write no cache
        ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="session")
def hf_gpt2_tok(tmp_path_factory):
    """The other reference: transformers' GPT2TokenizerFast from copies of the official files under the
    Hugging Face names (vocab.json = encoder.json, merges.txt = vocab.bpe), not from numgpt's writer."""
    transformers = pytest.importorskip("transformers")
    folder = GPT2_FILES
    out = tmp_path_factory.mktemp("hf_gpt2_tok")
    shutil.copy(folder / "encoder.json", out / "vocab.json")
    shutil.copy(folder / "vocab.bpe", out / "merges.txt")
    return transformers.GPT2TokenizerFast.from_pretrained(out)


@pytest.fixture(scope="session")
def tokenizer_corpus():
    """Varied text (tests/data/tokenizer_corpus.json, made by dev/make_tokenizer_corpus.py): name -> text."""
    path = Path(__file__).parent / "data" / "tokenizer_corpus.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def shakespeare():
    """tinyshakespeare (~1.1 MB), from ../shared/data relative to the repository; skip when absent."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent (the shared corpus is not committed)")
    return SHAKESPEARE.read_text(encoding="utf-8")

# ---- end of tokenizer block -------------------------------------------------------------------------------
