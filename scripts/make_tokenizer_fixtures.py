#!/usr/bin/env python3
"""Build the tokenizer parity fixtures in tests/fixtures/tokenizers/ with Hugging Face tokenizers.

Two byte-level BPE tokenizers are trained on local text (this repository's docs and sources plus
the hard cases below) with the exact pre-tokenizer configurations of two model families:
  qwen2_style   NFC normalizer, Qwen2's Split regex, ByteLevel, BPE; <|endoftext|>, <|im_start|>,
                <|im_end|> special, <think> added but not special; no BOS
  llama3_style  no normalizer, Llama-3's Split regex (digits in runs of 1-3), ByteLevel, BPE with
                ignore_merges and a few vocabulary words that no merge builds (as Llama-3 has);
                <|begin_of_text|> / <|end_of_text|> special, TemplateProcessing adding the BOS
Each directory gets tokenizer.json, tokenizer_config.json and expected.json: for every case of
cases.json, the ids without and with special tokens and the decoded text (skip_special_tokens
False), all from tokenizers itself. consa's CPU tests must reproduce every one.

Usage (needs the `tokenizers` package; the GPU machine has it):
    python3 scripts/make_tokenizer_fixtures.py tests/fixtures/tokenizers [--keep-tokenizers]
--keep-tokenizers reuses the tokenizer.json files already in the folder (training depends on the
repository's files at the time) and recomputes only the cases and HF's ids.
"""
import glob
import json
import os
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# The patterns as the models' own tokenizer.json files spell them.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")

HARD_CASES = [
    "",
    " ",
    "Hello world",
    " Hello world ",
    "  leading and trailing spaces  ",
    "I'm sure you're right, we've seen it; they'll know, she'd say, it's John's.",
    "I'M SURE YOU'RE RIGHT, WE'VE SEEN IT; THEY'LL KNOW, SHE'D SAY, IT'S JOHN'S.",
    "I'm You'Re We'vE They'LL She'D IT'S don't DON'T Don'T",
    "numbers: 1 12 123 1234 12345 123456 1234567 3.14159 -42 1,000,000 0x1F 1e-9",
    "٣٤٥ ١٢٣٤ digits in other scripts: ०१२३ 一二三",
    "tabs\tand\t\ttabs\t",
    "windows\r\nline\r\nendings\r\n",
    "mixed \n\n\n newlines \r\r and\n \n spaces",
    "many      spaces     between    words",
    "trailing spaces at the end of a line   \nnext line",
    "\n\n\nleading newlines",
    "code: for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "emoji: 👍 👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇩🇪 🤦🏼‍♂️",
    "CJK: 你好，世界！今天天气很好。日本語のテキスト、カタカナ。한국어 문장입니다.",
    "Arabic: مرحبا بالعالم، كيف حالك؟ Hebrew: שלום עולם, מה שלומך?",
    "combining: e\u0301 a\u0308 o\u0302 n\u0303 A\u030a (decomposed) vs é ä ô ñ Å (composed)",
    "Hangul jamo: \u1100\u1161\u11a8 and Devanagari: क्षत्रिय",
    "NBSP:\u00a0between\u00a0words and narrow\u202fNBSP, ideographic\u3000space, zero\u200bwidth",
    "fullwidth: ＡＢＣ ａｂｃ １２３ ！？",
    "special tokens: <|endoftext|> inside text <|im_start|>user\nHi there<|im_end|>",
    "llama specials: <|begin_of_text|>Hello<|end_of_text|> and <think>thinking</think>",
    "partial specials: <|endoftext <|im_start| |im_end|> <|>",
    "URLs: https://example.com/path?query=1&x=y#frag and e-mail a.b@c.org",
    "punctuation!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    "quotes: \u201cdouble\u201d \u2018single\u2019 \u00abguillemets\u00bb 'straight' \"straight\"",
    "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷ α β γ δ Ω",
    "control\x01chars\x7fand\x1bescape",
    "Ünïcödé Çàsé: ÀÉÎÕÜ àéîõü ẞ ß Σσς",
    "'s 's' ''s ' s",
    "a" * 300,
    "ab " * 100,
    "1" * 50,
]


def local_sources(root):
    """Text files of this repository: docs and sources, sorted so that training is repeatable."""
    patterns = ["docs/*.md", "README.md", "src/**/*.cpp", "src/**/*.h", "src/**/*.py", "scripts/*.py", "scripts/*.sh",
                "include/**/*.h", "recipes/*.yaml"]
    files = sorted({f for p in patterns for f in glob.glob(os.path.join(root, p), recursive=True)})
    return files


def build(name, pattern, normalizer, special, added, ignore_merges, bos, eos, vocab, corpus):
    tok = Tokenizer(models.BPE())
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in added])
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                   special_tokens=[(bos, tok.token_to_id(bos))]))
    tok.post_processor = processors.Sequence(steps)
    # Set ignore_merges in the saved JSON, so that it holds whatever the trainer did with it.
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    tok = Tokenizer.from_str(json.dumps(spec))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "model_max_length": 131072}
    return tok, config


BYTE_CHARS = None


def byte_level(text):
    """The byte-level spelling of `text` (GPT-2's bytes_to_unicode), as vocabularies store it."""
    global BYTE_CHARS
    if BYTE_CHARS is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
             list(range(ord("\xae"), ord("\xff") + 1))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        BYTE_CHARS = dict(zip(bs, map(chr, cs)))
    return "".join(BYTE_CHARS[b] for b in text.encode("utf-8"))


def add_unmerged_words(tok, count=12):
    """Adds vocabulary entries that no merge builds, as Llama-3's vocabulary has: words of the hard
    cases that take 2 or more tokens now. With ignore_merges such a word is one token."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    next_id = max(list(vocab.values()) + [t["id"] for t in spec["added_tokens"]]) + 1
    added = 0
    for case in HARD_CASES:
        for word in case.split(" ")[1:]:
            word = " " + word.strip(":,.;!?()'\"")
            if not word[1:].isalpha() or byte_level(word) in vocab:
                continue
            if len(tok.encode(word, add_special_tokens=False).ids) < 2:
                continue
            vocab[byte_level(word)] = next_id
            next_id += 1
            added += 1
            if added == count:
                return Tokenizer.from_str(json.dumps(spec))
    return Tokenizer.from_str(json.dumps(spec))


def ignore_merges_words(tok, limit=60):
    """Vocabulary words that BPE's merges would split but ignore_merges keeps whole."""
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = False
    merging = Tokenizer.from_str(json.dumps(spec))
    words = []
    for token, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        text = tok.decode([tok.token_to_id(token)])
        if not text.strip() or len(tok.encode(text, add_special_tokens=False).ids) != 1:
            continue
        if len(merging.encode(text, add_special_tokens=False).ids) > 1:
            words.append(text)
        if len(words) >= limit:
            break
    return words


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    keep = "--keep-tokenizers" in sys.argv
    out = args[0] if args else "tests/fixtures/tokenizers"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = local_sources(root)
    corpus = [open(f, encoding="utf-8").read() for f in sources] + HARD_CASES * 20
    # Whole source files as cases too (one with CRLF line ends), chosen for variety.
    whole = [os.path.join(root, p) for p in ("src/data/synthetic.cpp", "scripts/plot_sweep.py", "docs/training.md")]
    cases = list(HARD_CASES)
    for f in whole:
        if os.path.exists(f):
            cases.append(open(f, encoding="utf-8").read())
    cases.append(cases[-1].replace("\n", "\r\n"))
    os.makedirs(out, exist_ok=True)
    variants = {
        "qwen2_style": dict(pattern=QWEN2_PATTERN, normalizer=normalizers.NFC(),
                            special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], added=["<think>", "</think>"],
                            ignore_merges=False, bos=None, eos="<|endoftext|>", vocab=4000),
        "llama3_style": dict(pattern=LLAMA3_PATTERN, normalizer=None,
                             special=["<|begin_of_text|>", "<|end_of_text|>"], added=["<think>", "</think>"],
                             ignore_merges=True, bos="<|begin_of_text|>", eos="<|end_of_text|>", vocab=4000),
    }
    built = {}
    for name, v in variants.items():
        d = os.path.join(out, name)
        if keep and os.path.exists(os.path.join(d, "tokenizer.json")):
            tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            if v["ignore_merges"] and not ignore_merges_words(tok):
                tok = add_unmerged_words(tok)
                tok.save(os.path.join(d, "tokenizer.json"), pretty=True)
            built[name] = tok
            continue
        tok, config = build(name, corpus=corpus, **v)
        if v["ignore_merges"]:
            tok = add_unmerged_words(tok)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"), pretty=True)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as fh:
            json.dump(config, fh, indent=2)
        built[name] = tok
    # Words where ignore_merges decides the result, as one case (with and without a leading space).
    words = ignore_merges_words(built["llama3_style"])
    cases.append(" ".join(words) + "\n" + "".join(w.strip() + "\n" for w in words))
    print(f"{len(words)} words that ignore_merges keeps whole")
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as fh:
        json.dump(cases, fh, ensure_ascii=False, indent=0)
    for name, tok in built.items():
        d = os.path.join(out, name)
        expected = []
        for text in cases:
            plain = tok.encode(text, add_special_tokens=False).ids
            special = tok.encode(text, add_special_tokens=True).ids
            expected.append({"ids": plain, "ids_with_special": special,
                             "decoded": tok.decode(plain, skip_special_tokens=False),
                             "decoded_skip_special": tok.decode(plain, skip_special_tokens=True)})
        with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as fh:
            json.dump({"tokenizers_version": tokenizers.__version__, "cases": expected}, fh, ensure_ascii=False)
        merged = sum(len(e["ids"]) for e in expected)
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(cases)} cases, {merged} ids")


if __name__ == "__main__":
    main()
