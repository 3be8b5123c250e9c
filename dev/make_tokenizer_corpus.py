"""Write tests/data/tokenizer_corpus.json: varied text for comparing numgpt's tokenizer with tiktoken and
Hugging Face (prose, code, whitespace runs, numbers, contractions, scripts, emoji, combining marks,
control characters, very long words). JSON keeps control characters exact.

    python dev/make_tokenizer_corpus.py
"""

import json
import random
import string
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tokenizer_corpus.json"


def snippets() -> dict[str, str]:
    rng = random.Random(2)
    return {
        "prose": ("The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of "
                  "times; it was the age of wisdom... \"Quoted,\" she said -- and (parenthetically) left!\n"
                  "Mr. O'Neil paid $1,234.56 on 2024-03-01 at 10:30am for 3 items (approx. 12% off).\n"),
        "code_python": ("def fib(n: int) -> int:\n    \"\"\"Fibonacci.\"\"\"\n    if n < 2:\n        return n\n"
                        "    return fib(n - 1) + fib(n - 2)  # slow\n\n\nclass A(object):\n\tpass\n"
                        "x = {'a': [1, 2.5e-3, None], \"b\": (True,)}\nprint(f\"{x!r:>10}\")\n"),
        "code_c": ("#include <stdio.h>\nint main(void) {\n  for (int i = 0; i < 10; ++i) {\n"
                   "    printf(\"%d\\n\", i << 2);\n  }\n  return 0x1F & ~0u;\n}\n"),
        "code_json_html": ('{"key": "value", "list": [1, 2, 3], "nested": {"x": null}}\n'
                           '<div class="a b"><p>Hello&nbsp;<b>world</b></p></div>\n'
                           "https://example.com/path?q=1&r=two#frag user@example.org C:\\Users\\me\\file.txt\n"),
        "whitespace": ("a  b   c    d\t\te\n\nf\n\n\ng   \n  \t \r\nh \u00a0 i\u3000j  \n    \n\t\t\n"
                       "trailing   \nleading spaces\n      \n\n\n\n \n \n  x  \n  "),
        "whitespace_only": "   \t\n\n  \r\n\t  \u2003\u2009 \x0b\x0c ",
        "numbers": ("0 1 12 123 1234 12345 123456789012345678901234567890 3.14159 -2.5e+10 1,000,000 0x1F "
                    "007 10% ½ ¼ ² ³ ⅓ Ⅻ ٣٤٥ ४२ 一二三 ①②\n"),
        "contractions": ("it's can't we're we've I'm you'll he'd IT'S CAN'T WE'RE WE'VE I'M YOU'LL HE'D "
                         "It'S 's 't 're 've 'm 'll 'd ''s '' ' 'x 'S 'T it’s can’t we’re I’m "
                         "rock'n'roll o'clock '90s don''t\n"),
        "chinese": "我们在北京学习中文。今天天气很好，我们去公园散步吧！机器学习和自然语言处理。\n",
        "japanese_korean": "日本語のテキストです。カタカナとひらがな。 한국어 문장입니다. 안녕하세요!\n",
        "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю. ПРИВЕТ, Мир!\n",
        "arabic_hebrew": "مرحبا بالعالم، هذا نص عربي. ١٢٣ שלום עולם, זה טקסט בעברית.\n",
        "indic_thai_greek": "नमस्ते दुनिया। हिन्दी में पाठ। สวัสดีชาวโลก Καλημέρα κόσμε! Ωμέγα.\n",
        "emoji": ("😀 😃😄 👍🏽 👍🏿 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🏴‍☠️ 🇫🇷🇯🇵🇺🇸 ❤️ ✌︎ ☃ "
                  "🙂🙂🙂 a😀b 1😀2 !😀!\n"),
        "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 𓀀𓀁 🀄 𠜎𠜱𠝹 \U0010fffd \U000e0041 \U0001f9ff\n",
        "combining": ("e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̗͈̪ \u0301 \u0301\u0301 "
                      "x\u20dd 1\u20e3 ñ vs n\u0303\n"),
        "controls": ("\x00\x01\x02\x07\x08 \x1b[31mred\x1b[0m \x7f \x85 \x1c\x1d\x1e\x1f "
                     "\u200b\u200c\u200d\ufeff \u2028 \u2029 \u00ad \ufffd\n"),
        "mixed_scripts": "Hello世界Привет123abcДа!?你好world2024年",
        "long_word": "a" * 3000,
        "long_repeated_word": "supercalifragilistic" * 200,
        "long_random_letters": "".join(rng.choice(string.ascii_letters) for _ in range(3000)),
        "long_digits": "".join(rng.choice(string.digits) for _ in range(2000)),
        "long_punctuation": "!?" * 700 + "=" * 500,
        "long_cjk": "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1500)),
        "long_emoji": "🙂" * 600,
        "long_spaces": " " * 2000 + "x" + "\n" * 1000 + "y" + "\t " * 500,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(snippets(), ensure_ascii=True, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
