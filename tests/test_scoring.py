"""Perplexity against a direct computation with transformers: the strided windows of Hugging Face's guide
"Perplexity of fixed-length models" run through GPT2LMHeadModel, on a 32-position model and a ~200-token
text; per-token log-probabilities against transformers' log_softmax."""

import math

import numpy as np
import pytest
from references import reference

from numgpt import NumgptError
from numgpt.formats.hf import load_checkpoint
from numgpt.scoring import perplexity, token_logprobs, windows
from numgpt.tokenizer import Tokenizer

torch = reference("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest: torch threads under load

TEXT = (
    "The tower is 324 metres (1,063 ft) tall, about the same height as an 81-storey building, and the "
    "tallest structure in Paris. Its base is square, measuring 125 metres (410 ft) on each side. During "
    "its construction, the Eiffel Tower surpassed the Washington Monument to become the tallest man-made "
    "structure in the world, a title it held for 41 years until the Chrysler Building in New York City was "
    "finished in 1930. Naïve café owners nearby sell crêpes for 5 € — a bargain, they say. Due to the "
    "addition of a broadcasting aerial at the top of the tower in 1957, it is now taller than the Chrysler "
    "Building by 5.2 metres (17 ft). Excluding transmitters, the Eiffel Tower is the second tallest "
    "free-standing structure in France after the Millau Viaduct. The tower has three levels for visitors, "
    "with restaurants on the first and second levels."
)

# Both sides are float32 forwards of the same weights (different summation orders, ~1e-6 relative per
# logit); averaged over ~200 tokens the perplexities agree far better than the 1e-4 asked for.
RTOL = 1e-4


@pytest.fixture(scope="module")
def short(hf_short_context_ckpt):
    config, params = load_checkpoint(hf_short_context_ckpt.folder)
    return hf_short_context_ckpt.model, config, params, Tokenizer.gpt2()


def hf_strided_nll(model, ids, stride):
    """The windows of Hugging Face's guide (begin_loc, end_loc, trg_len as there), each window's
    log-probabilities from transformers' forward, summing -ln p over every target token.

    Subtle: the guide itself then weights each window's mean loss by `num_valid_tokens - batch_size`,
    which is right for the first window only (later windows have trg_len targets, all shifted into the
    loss); with stride 1 it would count 31 of 191 tokens. So the reference sums the per-token terms instead.
    """
    max_length = model.config.n_positions
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, len(ids), stride):
        end_loc = min(begin_loc + max_length, len(ids))
        trg_len = end_loc - prev_end_loc
        window = ids[begin_loc:end_loc]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), -1).numpy()
        for t in range(max(1, len(window) - trg_len), len(window)):  # targets; position 0 has no context
            nll_sum -= logp[t - 1, window[t]]
            n_tokens += 1
        prev_end_loc = end_loc
        if end_loc == len(ids):
            break
    return math.exp(nll_sum / n_tokens), n_tokens, nll_sum


@pytest.mark.parametrize("stride", [5, 16, 31])
def test_strided_perplexity_equals_hugging_face_guide(short, stride):
    model, config, params, tok = short
    ids = tok.encode(TEXT)
    assert 180 <= len(ids) <= 260 and config.n_positions == 32  # many windows
    ref_ppl, ref_n, _ = hf_strided_nll(model, ids, stride)
    ours = perplexity(params, config, tok, TEXT, stride=stride, bos=False)
    assert ours.n_tokens == ref_n == len(ids) - 1  # every token but the first scored once
    assert ours.perplexity == pytest.approx(ref_ppl, rel=RTOL)


def test_bos_prepends_endoftext_and_predicts_every_byte(short):
    model, config, params, tok = short
    ids = [tok.eot_id] + tok.encode(TEXT)
    ref_ppl, ref_n, ref_nll = hf_strided_nll(model, ids, 16)
    ours = perplexity(params, config, tok, TEXT, stride=16)  # bos=True is the default
    assert ours.bos and ours.n_tokens == ref_n == len(ids) - 1
    assert ours.perplexity == pytest.approx(ref_ppl, rel=RTOL)
    assert ours.n_bytes == len(TEXT.encode("utf-8"))
    assert ours.bits_per_byte == pytest.approx(ref_nll / math.log(2) / len(TEXT.encode("utf-8")), rel=RTOL)


def test_token_logprobs_in_one_window_equal_transformers_log_softmax(short):
    model, config, params, _ = short
    ids = [50256, 464, 3290, 318, 257, 1332, 13, 632, 318, 991, 287, 6342, 13]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
    ref = logp[np.arange(len(ids) - 1), ids[1:]]
    # float32 logits of two implementations: ~1e-6 absolute on values of order 1-10
    np.testing.assert_allclose(token_logprobs(params, config, ids), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("n_tokens,n_positions,stride", [(2, 4, 1), (10, 4, 3), (100, 32, 16), (100, 32, 31),
                                                          (33, 32, 1), (32, 32, 5), (1000, 1024, 512)])
def test_windows_score_every_token_once_with_enough_context(n_tokens, n_positions, stride):
    scored = []
    for begin, end, first in windows(n_tokens, n_positions, stride):
        assert end - begin <= n_positions
        assert first - begin >= min(first, n_positions - stride)  # context of the first scored token
        scored += range(first, end)
    assert scored == list(range(1, n_tokens))


def test_bad_stride_and_short_text_are_one_line_errors(short):
    _, config, params, tok = short
    for stride in (0, 32, 40):
        with pytest.raises(NumgptError, match="stride"):
            perplexity(params, config, tok, TEXT, stride=stride)
    with pytest.raises(NumgptError, match="too short"):
        perplexity(params, config, tok, "", bos=True)
    with pytest.raises(NumgptError, match="too short"):
        perplexity(params, config, tok, "Hi", bos=False)


def test_vocabulary_without_endoftext_scores_without_bos_by_default():
    """A BPE trained on one text (like the built-in model's) has no <|endoftext|>: the default then
    treats the first token as context, exactly as bos=False; asking for BOS is a one-line error."""
    from numgpt import GPTConfig, train_bpe
    from numgpt.params import init_params
    tok = train_bpe(TEXT * 3, vocab_size=300)
    assert tok.eot_id is None
    config = GPTConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    params = init_params(config, np.random.default_rng(0))
    default = perplexity(params, config, tok, TEXT, stride=16)
    explicit = perplexity(params, config, tok, TEXT, stride=16, bos=False)
    assert default.bos is False and default.nll == explicit.nll and default.n_tokens == explicit.n_tokens
    with pytest.raises(NumgptError, match="no <\\|endoftext\\|>"):
        perplexity(params, config, tok, TEXT, bos=True)
