"""The pre-training text of the fortunes-aware base model that bench/bench_classify.py fine-tunes
(`dev/make_fortunes_base.sh`): tinyshakespeare, chatterbot-corpus's conversations, and Debian's fortunes
with the classification benchmark's validation and test fortunes left out (the same split as
bench_classify.py's --seed), so the model has read none of the text it is scored on, and no labels.

    python dev/fortunes_base_corpus.py ../shared/data/tinyshakespeare.txt -o /tmp/fortunes_base.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_classify import CATEGORIES, chosen_categories, stratified_split  # noqa: E402

from numgpt.posttrain.classdata import FORTUNES_DIR, fortune_categories, read_fortunes  # noqa: E402
from numgpt.posttrain.corpus import FORTUNES_SKIPPED, dialogue_text, read_chatterbot  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="more UTF-8 text files (tinyshakespeare)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--categories", default=CATEGORIES, help="the benchmark's categories (bench_classify's; all: every file)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    chosen = chosen_categories(args.categories)
    scored = read_fortunes(FORTUNES_DIR, chosen)
    train, _, _ = stratified_split([e.label for e in scored], (args.val_fraction, args.test_fraction),
                                   np.random.default_rng(args.seed))
    others = [c for c in fortune_categories(FORTUNES_DIR) if c not in FORTUNES_SKIPPED and c not in chosen]
    fortunes = [e.text for e in read_fortunes(FORTUNES_DIR, others)]
    trained = [scored[i].text for i in train if scored[i].label not in FORTUNES_SKIPPED]   # art and ascii-art: pictures
    fortunes += trained
    parts = [Path(t).read_text(encoding="utf-8") for t in args.texts]
    parts += ["\n\n".join(fortunes), dialogue_text(read_chatterbot())]
    Path(args.output).write_text("\n\n".join(parts), encoding="utf-8")
    print(f"{args.output}: {sum(map(len, parts)):,} characters; {len(fortunes):,} fortunes ({len(trained):,} of the "
          f"benchmark's training split, none of its {len(scored) - len(train):,} validation and test fortunes)")


if __name__ == "__main__":
    main()
