"""The text of the built-in chat model: what people wrote that ships in registry packages, and the synthetic
tasks written out as text.

    tinyshakespeare     a file the caller passes (nanoGPT's data set)
    fortunes            Debian's `fortunes` package: quotations, jokes and definitions by category
    chatterbot-corpus   `pip install chatterbot-corpus`: ~2,000 short English conversations in YAML (BSD-3)
    synthetic tasks     synth.py's questions and answers as "Question: ...\\nAnswer: ..." paragraphs

None of it is in the repository: it is read from where the packages put it. Pre-training sees plain text
(no chat tokens: `numgpt prepare` refuses special tokens inside text); the chatterbot conversations are
also turned into chat records for SFT (small talk), with numgpt as the assistant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import NumgptError
from .synth import prompt_messages, reference_reply

# botprofile.yml is chatterbot's own persona ("I am a chat bot named ..."): numgpt answers as numgpt
CHATTERBOT_SKIPPED = ("botprofile",)
# ascii-art is pictures drawn with characters, not language. "art" (quotations about art: language) was left out
# by mistake when the shipped chat model was made; it stays out so that the recipe still makes that model's data.
FORTUNES_SKIPPED = ("ascii-art", "art")


def chatterbot_folder(language: str = "english") -> Path:
    """Where chatterbot-corpus keeps a language's YAML files; refused in one line when it is not installed."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise NumgptError("the chatterbot-corpus package is not installed; pip install chatterbot-corpus "
                          "(~2,000 English conversations, BSD-3)") from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    if not folder.is_dir():
        raise NumgptError(f"chatterbot-corpus has no {language!r} conversations ({folder})")
    return folder


def read_chatterbot(folder: str | os.PathLike | None = None) -> list[list[str]]:
    """Every conversation of the corpus' YAML files (but CHATTERBOT_SKIPPED) as its list of utterances,
    file by file in name order; utterances that are not text (a few numbers in the YAML) become text."""
    import yaml                              # chatterbot-corpus's own dependency: here only

    folder = chatterbot_folder() if folder is None else Path(folder)
    conversations = []
    for path in sorted(folder.glob("*.yml")):
        if path.stem in CHATTERBOT_SKIPPED:
            continue
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        for conversation in data.get("conversations") or []:
            said = [str(u).strip() for u in conversation if str(u).strip()]
            if len(said) >= 2:
                conversations.append(said)
    return conversations


def chatterbot_chats(conversations: Sequence[Sequence[str]]) -> list[dict]:
    """The conversations as OpenAI fine-tuning records: turns alternate user, assistant, user, ...; a
    last turn of the user's has no reply and is dropped."""
    records = []
    for said in conversations:
        said = list(said[:len(said) // 2 * 2])
        records.append({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": u}
                                     for i, u in enumerate(said)]})
    return records


def dialogue_text(conversations: Sequence[Sequence[str]]) -> str:
    """The conversations as a play script: 'A: ...' and 'B: ...' lines, a blank line between them."""
    return "\n\n".join("\n".join(f"{'AB'[i % 2]}: {u}" for i, u in enumerate(said)) for said in conversations)


def fortunes_text(folder: str | os.PathLike | None = None) -> str:
    """Every fortune of Debian's package (but FORTUNES_SKIPPED), a blank line between them."""
    from .classdata import FORTUNES_DIR, fortune_categories, read_fortunes

    folder = FORTUNES_DIR if folder is None else folder
    categories = [c for c in fortune_categories(folder) if c not in FORTUNES_SKIPPED]
    return "\n\n".join(example.text for example in read_fortunes(folder, categories))


def question_answer(task: Mapping, *, answer: bool = True) -> str:
    """One task as the plain text a base model reads: 'Question: ...\\nAnswer: ...' (its reference reply);
    with answer=False the prompt a base model completes (few-shot evaluation)."""
    question = prompt_messages(task)[-1]["content"]
    return f"Question: {question}\nAnswer:" + (f" {reference_reply(task)}" if answer else "")


def tasks_text(tasks: Sequence[Mapping]) -> str:
    """Synthetic tasks as pre-training text: question-and-answer paragraphs."""
    return "\n\n".join(question_answer(task) for task in tasks)
