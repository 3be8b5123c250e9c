"""`numgpt generate`, `numgpt next`, `numgpt perplexity` and `numgpt info`: using a GPT-2 model.

Only this module reads flags, stdin and the environment (the Hugging Face cache location), prints, and
draws progress bars; generate, next and perplexity work through the LanguageModel facade (numgpt.lm)
alone, and info reads a folder's files through numgpt.formats without loading the weights. Options are
checked before the model loads, so a bad flag fails at once. The decoding flags, their help and defaults
are generated from the option dataclasses (numgpt/cli/options.py), not restated here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import NumgptError
from ..generate import GenerationOptions, encode_prompt
from .options import (add_decoding_flags, add_speculative_flags, add_structured_flags, decoding_kwargs,
                      speculative_kwargs, structured_kwargs)
from .paths import read_text
from .progress import progress_reporter

GEN = GenerationOptions()   # the defaults

# what --model takes, for every command that has it (one definition: the names formats/hub.py resolves)
MODEL_HELP = ("a Hugging Face GPT-2 folder (config.json + model.safetensors), a `numgpt train` run folder, "
              "'builtin', or a cached hub name such as gpt2 (default: builtin, the Shakespeare model shipped "
              "in the package)")

GENERATE_DESCRIPTION = """\
Continue a prompt: the new text is printed as it is generated. The prompt comes from PROMPT, --file,
or stdin (one trailing newline of a file or stdin is dropped); an empty prompt starts from
<|endoftext|>. A special token written in the prompt (<|endoftext|>) is that token, as a document
boundary (`numgpt tokenize` asks for --allow-special to do the same).
"""

NEXT_DESCRIPTION = """\
Show the model's next-token distribution after PROMPT: rank, id, token and probability of the most
likely tokens. <|endoftext|> written in the prompt is the special token.
"""

PERPLEXITY_DESCRIPTION = """\
Score a UTF-8 text with the model: number of tokens, perplexity, bits per byte, and the exact
definitions used. <|endoftext|> written in the text is the special token (a document boundary).
On a terminal a progress bar shows; otherwise a progress line goes to stderr every 10 s (-q: none).
"""

INFO_DESCRIPTION = """\
Describe a model folder without loading its weights: the config, the number of parameters, weight
files with sizes and dtypes, and the tokenizer.
"""

GENERATE_EXAMPLES = """\
examples: (the built-in Shakespeare model unless --model says another)
  numgpt generate "ROMEO:"                                              sample 64 tokens, streamed
  numgpt generate --greedy --max-new-tokens 20 "JULIET:"                the most likely tokens
  numgpt generate --temperature 0.8 --top-k 40 --seed 1 "KING:"         a reproducible sample
  numgpt generate --top-p 0.9 --repetition-penalty 1.2 --stop "\\n\\n" "ROMEO:"
  numgpt generate --num-samples 3 --max-new-tokens 30 "First Citizen:"
  numgpt generate --max-new-tokens 500 --sliding-window "ROMEO:"        past the 128-token context
  echo "ROMEO:" | numgpt generate --no-stream --json
  numgpt generate --model gpt2 "The capital of France is"              GPT-2 from the Hugging Face cache
  numgpt generate --greedy --speculative ngram --num-draft 4 --verbose "ROMEO: to be or not to be; to be"
                                                                        prompt lookup, statistics on stderr
  numgpt generate --regex "(yes|no)\\." "Is the sky blue? Answer:"      only text matching the regex
  numgpt generate --json-schema person.json "A person as JSON:"        JSON valid against a schema

Decoding: sampling from the model's distribution by default (temperature 1, no top-k/top-p), greedy with
--greedy or --temperature 0. Rules apply in the sampler's order (numgpt explain sampling shows it): the
--regex/--json-schema constraint, logit bias, presence/frequency penalties, repetition penalty,
temperature, top-k, top-p, min-p. The same
--seed and options give the same text. --stop strings are matched in the
new text only, not across the end of the prompt. prompt + --max-new-tokens must fit in the
model's context unless --sliding-window (then the last n_positions - stride tokens are kept and
re-read each time the context fills: about one extra prompt token per generated token by default).
"""

NEXT_EXAMPLES = """\
examples:
  numgpt next "ROMEO: I"                                  the built-in model: "'ll" 0.12, ' am' 0.078, ...
  numgpt next --top 20 --json "JULIET:"                   id, token and probability as JSON
  numgpt next --model gpt2 "I wish you a happy New"       GPT-2 124M: ' Year' 0.97, ' Years' 0.018, ...

Probabilities are the softmax of the raw logits (temperature 1, nothing filtered). Tokens are shown
repr-quoted so spaces and newlines are visible; a token holding part of a UTF-8 character shows U+FFFD.
"""

PERPLEXITY_EXAMPLES = """\
examples:
  echo "To be, or not to be, that is the question." | numgpt perplexity -
  numgpt perplexity --json text.txt                        any UTF-8 text file
  numgpt perplexity --model gpt2 --stride 256 wiki.test.txt

Definitions (exact, so results can be compared): every token is predicted, the first one from
<|endoftext|> prepended as BOS (--no-bos, or a vocabulary without <|endoftext|>: the first token is
context only); perplexity = exp(mean of
-ln p(token | preceding tokens)); bits per byte = sum of -log2 p / UTF-8 bytes of the predicted tokens.
Texts longer than the context use Hugging Face's strided sliding window: windows of n_positions tokens
every --stride tokens (default n_positions / 2), each token scored once with at least
n_positions - stride tokens of context.
"""

INFO_EXAMPLES = """\
examples:
  numgpt info                                the built-in model
  numgpt info --model runs/mine --json       a training run's best checkpoint
  numgpt info --model gpt2                   GPT-2 from the Hugging Face cache
"""


def register(sub) -> None:
    """Add `generate`, `next`, `perplexity` and `info` to the `numgpt` subcommands."""
    _register_generate(sub)
    _register_next(sub)
    _register_perplexity(sub)
    _register_info(sub)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="NAME_OR_FOLDER", help=MODEL_HELP)


def _add_adapter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", metavar="DIR", help="a PEFT LoRA adapter folder trained on --model (RUN/adapter of "
                   "`numgpt train --lora-rank R`, or peft's save_pretrained), merged into the weights as they load")


def _register_generate(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a GPT-2 model (streamed)",
                       description=GENERATE_DESCRIPTION,
                       epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt (default: --file, else stdin)")
    p.add_argument("--file", "-f", metavar="PATH", help="read the prompt from a UTF-8 file")
    _add_model(p)
    _add_adapter(p)
    add_decoding_flags(p, shown_defaults={"max_new_tokens": DEFAULT_NEW_TOKENS_HELP})
    add_speculative_flags(p)
    add_structured_flags(p)
    o = p.add_argument_group("output")
    o.add_argument("--no-stream", action="store_true", help="print the text when it is complete")
    o.add_argument("--echo", action="store_true", help="print the prompt before the new text")
    o.add_argument("--json", action="store_true",
                   help="print a JSON list of {text, token_ids, finish_reason} (and speculative: its statistics, "
                        "with --speculative) (implies --no-stream)")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    o.add_argument("--verbose", "-v", action="store_true", help="print statistics per sample on stderr: tokens, "
                   "finish reason; with --speculative drafted, accepted, acceptance rate, tokens per forward")
    p.set_defaults(run=run_generate)


def _register_next(sub) -> None:
    p = sub.add_parser("next", help="the most likely next tokens after a prompt, with probabilities",
                       description=NEXT_DESCRIPTION,
                       epilog=NEXT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", metavar="PROMPT", help="the text before the next token")
    _add_model(p)
    _add_adapter(p)
    p.add_argument("--top", type=int, default=10, metavar="N", help="how many tokens to show, >= 1 (10)")
    p.add_argument("--json", action="store_true", help="a JSON list of {rank, id, token, probability}")
    p.set_defaults(run=run_next)


def _register_perplexity(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity and bits per byte of a text file",
                       description=PERPLEXITY_DESCRIPTION,
                       epilog=PERPLEXITY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file, or - for stdin")
    _add_model(p)
    _add_adapter(p)
    p.add_argument("--stride", type=int, metavar="S",
                   help="window step for texts longer than the context, 1..n_positions-1 (n_positions / 2)")
    p.add_argument("--no-bos", action="store_true",
                   help="do not prepend <|endoftext|>: the first token is context only")
    p.add_argument("--json", action="store_true", help="print the results as a JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run_perplexity)


def _register_info(sub) -> None:
    p = sub.add_parser("info", help="a model's config, parameter count, files and tokenizer",
                       description=INFO_DESCRIPTION,
                       epilog=INFO_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model(p)
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.set_defaults(run=run_info)


# ---------------------------------------------------------------------------------------------------


def load_model(args):
    """The LanguageModel of --model (the hub cache location honours HF_HUB_CACHE / HF_HOME, the threads
    that read the weights NUMGPT_NUM_THREADS)."""
    from ..formats import hf_cache_dir
    from ..lm import load
    from ..threads import threads_from_env

    return load(args.model, cache_dir=hf_cache_dir(os.environ), threads=threads_from_env(os.environ),
                adapter=getattr(args, "adapter", None))


def load_draft_model(name: str):
    """The LanguageModel of --draft-model (as load_model loads --model); its errors say they are the draft's."""
    try:
        return load_model(argparse.Namespace(model=name))
    except NumgptError as e:
        raise NumgptError(f"--draft-model: {e}") from None


def model_folder(args) -> Path:
    from ..formats import hf_cache_dir, resolve_model
    from ..lm import builtin_model_folder

    if args.model is None:
        return builtin_model_folder()
    return resolve_model(args.model, cache_dir=hf_cache_dir(os.environ))


def read_prompt(args) -> str:
    if args.prompt is not None and args.file is not None:
        raise NumgptError("give the prompt either as PROMPT or with --file, not both")
    if args.prompt is not None:
        return args.prompt
    if args.file is None and sys.stdin.isatty():
        raise NumgptError('no prompt: pass PROMPT, --file PATH, or pipe text on stdin ("" for none)')
    text = read_text(args.file or "-")
    return text[:-1] if text.endswith("\n") else text


def fitted_options(options: dict, lm, prompt: str) -> dict:
    """The options with the default --max-new-tokens cut to what fits the model's context after the
    prompt (a model with a 32-token context is usable without -n); a typed -n is kept, and checked."""
    if "max_new_tokens" in options or options.get("sliding_window"):
        return options
    room = lm.config.n_positions - len(encode_prompt(lm.tokenizer, prompt))
    return {**options, "max_new_tokens": new_tokens_that_fit(room)}


DEFAULT_NEW_TOKENS_HELP = f"{GEN.max_new_tokens}, or fewer if the model's context ends first"


def new_tokens_that_fit(room: int) -> int:
    """The default --max-new-tokens where `room` positions are left after the prompt (at least 1: a prompt
    that fills the context is then refused by name)."""
    return max(1, min(GEN.max_new_tokens, room))


def run_generate(args) -> int:
    given = {**decoding_kwargs(args), **speculative_kwargs(args)}    # checked before the model loads
    structured = structured_kwargs(args)
    if structured and given.get("speculative"):
        raise NumgptError(f"--speculative cannot be combined with --{next(iter(structured)).replace('_', '-')} "
                          "(drafts are not checked against it): drop one of them")
    if args.echo and args.json:
        raise NumgptError("--json gives each sample's new text and ids, without the prompt: drop --echo")
    prompt = read_prompt(args)
    lm = load_model(args)
    options = fitted_options(given, lm, prompt)
    samples = GenerationOptions.from_mapping(options).num_return_sequences
    options.update(structured)
    if args.draft_model is not None:
        options["draft_model"] = load_draft_model(args.draft_model)
    out = sys.stdout
    if not (args.no_stream or args.json or samples > 1):
        if args.echo:
            out.write(prompt)
            out.flush()
        completions: list = []
        for piece in lm.stream_pieces(prompt, completions=completions, **options):
            if piece.text:
                out.write(piece.text)
                out.flush()
        out.write("\n")
        print_statistics(completions, args.verbose)
        note_cut_constraint(completions, structured)
        return 0
    update, close = progress_reporter(not args.quiet, "token", "generate")
    try:
        completions = lm.completions(prompt, progress=update, **options)
    finally:
        close()
    print_statistics(completions, args.verbose)
    note_cut_constraint(completions, structured)
    if args.json:
        print(json.dumps([{"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
                           **({"speculative": c.speculative.as_dict()} if c.speculative is not None else {})}
                          for c in completions], ensure_ascii=False, indent=2))
    elif len(completions) == 1:
        print((prompt if args.echo else "") + completions[0].text)
    else:
        for i, c in enumerate(completions):
            print(f"--- sample {i + 1} of {len(completions)} ---")
            print((prompt if args.echo else "") + c.text)
    return 0


def note_cut_constraint(completions, structured: dict) -> None:
    """A note on stderr for each constrained sample that --max-new-tokens cut before its text was whole (the
    output gave no sign of it but finish reason "length" under --verbose)."""
    if not structured:
        return
    from ..structured import check_structured
    cut = [i + 1 for i, c in enumerate(completions) if c.finish_reason == "length"]
    if cut:                                            # (a cut may still have ended where the text was whole)
        language = check_structured(**structured)
        cut = [i for i in cut if not language.matches(completions[i - 1].text)]
    said = ("before its JSON was complete: it is not valid against the schema; raise -n, or bound the schema's strings "
            "(maxLength)") if "json_schema" in structured else "before it matched --regex: it does not; raise -n"
    for i in cut:
        print(f"note: {f'sample {i}' if len(completions) > 1 else 'the text'} reached --max-new-tokens {said}",
              file=sys.stderr)


def print_statistics(completions, verbose: bool) -> None:
    """--verbose: one line per sample on stderr (its tokens, finish reason, what speculation did)."""
    if not verbose:
        return
    for i, c in enumerate(completions):
        line = f"sample {i + 1}: {len(c.token_ids)} tokens, finish reason {c.finish_reason}"
        s = c.speculative
        if s is not None:
            line += (f"; speculative: drafted {s.drafted}, accepted {s.accepted} ({s.acceptance_rate:.1%}), "
                     f"{s.forwards} forwards of the model, {s.tokens_per_forward:.2f} tokens per forward")
        print(line, file=sys.stderr)


def run_next(args) -> int:
    if args.top < 1:
        raise NumgptError(f"--top must be >= 1, got {args.top}")
    lm = load_model(args)
    best = lm.next_tokens(args.prompt, top=args.top)
    if args.json:
        print(json.dumps([{"rank": r, "id": t.id, "token": t.token, "probability": t.probability}
                          for r, t in enumerate(best, 1)], ensure_ascii=False, indent=2))
        return 0
    shown = [repr(t.token) for t in best]
    width = max(len("token"), *map(len, shown))
    print(f"{'rank':>4}  {'id':>6}  {'token':<{width}}  probability")
    for r, (t, s) in enumerate(zip(best, shown), 1):
        print(f"{r:>4}  {t.id:>6}  {s:<{width}}  {t.probability:.4g}")
    return 0


def run_perplexity(args) -> int:
    if args.stride is not None and args.stride < 1:
        raise NumgptError(f"--stride must be >= 1, got {args.stride}")
    text = read_text(args.file)
    lm = load_model(args)
    update, close = progress_reporter(not args.quiet, "window", "perplexity")
    try:
        score = lm.score(text, stride=args.stride, bos=False if args.no_bos else None, progress=update)
    finally:
        close()
    if args.json:
        print(json.dumps({"file": args.file, **score.as_dict()}, indent=2))
        return 0
    print(f"file            {args.file}")
    print(f"tokens          {score.n_tokens} predicted ({'<|endoftext|> prepended' if score.bos else 'first token is context'})")
    print(f"bytes           {score.n_bytes}")
    print(f"perplexity      {score.perplexity:.4f}")
    print(f"bits per byte   {score.bits_per_byte:.4f}")
    print(f"mean nll        {score.mean_nll:.4f} nats/token")
    print(f"window/stride   {score.window}/{score.stride}")
    from ..scoring import DEFINITIONS
    print(f"definitions     {DEFINITIONS}")
    return 0


def run_info(args) -> int:
    import dataclasses

    from ..formats import checkpoint_summary, load_tokenizer

    folder = model_folder(args)
    summary = checkpoint_summary(folder)
    config = summary["config"]
    tok = load_tokenizer(folder, config)
    tokenizer = {"vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
                 "files": summary["tokenizer_files"] or ["(none: GPT-2's built-in tokenizer)"]}
    kind = model_kind(Path(summary["folder"]), tok)
    training = training_summary(Path(summary["folder"]))
    if args.json:
        print(json.dumps({**summary, "config": dataclasses.asdict(config), "tokenizer": tokenizer, "kind": kind,
                          "training": training}, indent=2))
        return 0
    print(f"folder       {summary['folder']}")
    print("config       " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))
    if summary["disagreement"]:
        print(f"parameters   {summary['n_params']:,} by config.json, but config.json and the weights disagree: "
              f"{summary['disagreement']} (numgpt refuses to load it)")
    else:
        print(f"parameters   {summary['n_params']:,} ({summary['float32_bytes'] / 2**20:.1f} MiB as float32)")
    for name, f in summary["weight_files"].items():
        print(f"weights      {name}: {f['bytes'] / 2**20:.1f} MiB, {f['tensors']} tensors, {'/'.join(f['dtypes'])}")
    print(f"tokenizer    {tok.vocab_size} tokens, <|endoftext|> = {tok.eot_id}, files: {', '.join(tokenizer['files'])}")
    print(f"kind         {kind['text']}")
    if training is not None:
        print(f"training     {training['text']}")
    return 0


def training_summary(folder: Path) -> dict | None:
    """For a training checkpoint (a run's best/ or latest/): its step, best validation loss, last evaluation
    and tokens seen, and the run's other checkpoint; None for a plain model folder."""
    from ..training.loop import BEST, LATEST
    from ..training.state import checkpoint_info, checkpoint_step

    state = checkpoint_info(folder)
    if state is None or not isinstance(state.get("step"), int):
        return None
    out = {k: state.get(k) for k in ("step", "best_val_loss", "evaluated_step", "tokens_seen")}
    best = out["best_val_loss"]
    text = (f"a training checkpoint at step {out['step']}" +
            (f", best val loss {best:.4f}" if isinstance(best, (int, float)) else ", not evaluated yet") +
            (f" (last evaluation at step {out['evaluated_step']})" if out["evaluated_step"] is not None else ""))
    if folder.name in (BEST, LATEST):
        other = folder.parent / (LATEST if folder.name == BEST else BEST)
        step = checkpoint_step(other)
        out["other"] = {"folder": str(other), "step": step}
        text += f"; the run's {other.name}/ is at step {step}" if step is not None else f"; the run has no {other.name}/"
    out["text"] = text
    return out


def model_kind(folder: Path, tok) -> dict:
    """What the folder holds, for `info`: a classifier (its labels), a chat model (its end-of-turn token),
    or a language model, with the commands that use it."""
    from ..formats.hf import CLASSIFIER_HEAD, classifier_labels
    from ..formats.safetensors import checked_header
    from ..posttrain.chat_format import chat_template
    from ..training.state import EXTRA_FILE

    labels = classifier_labels(folder)
    if labels is not None:
        return {"kind": "classifier", "labels": labels,
                "text": f"a classifier (GPT2ForSequenceClassification) of {len(labels)} label{'s' * (len(labels) != 1)}: "
                        f"{', '.join(labels)} "
                        "(numgpt classify predict / evaluate)"}
    extra = folder / EXTRA_FILE
    if extra.is_file() and CLASSIFIER_HEAD in checked_header(extra):
        # a reward or classify run's checkpoint: GPT-2's weights, its score head among the run's extra tensors
        # (it was called a chat model by its tokenizer; chat then refused it)
        return {"kind": "classifier checkpoint",
                "text": f"a training checkpoint of a classifier or reward model (its {CLASSIFIER_HEAD} in {EXTRA_FILE}); "
                        "numgpt classify evaluate|predict and numgpt reward score take the run's model/"}
    try:
        template = chat_template(tok)
    except NumgptError as e:
        return {"kind": "language model", "text": f"a language model; its chat template cannot be used: {e}"}
    if template is not None:
        return {"kind": "chat model", "end_id": template.end_id,
                "text": f"a chat model: numgpt's chat template, a reply ends at <|end|> = {template.end_id} "
                        "(numgpt chat, numgpt.posttrain.chat)"}
    return {"kind": "language model", "text": "a language model, no chat template (numgpt generate; numgpt chat "
                                              "--transcript)"}
