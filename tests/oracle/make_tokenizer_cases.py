"""Writes tokenizer parity cases with the real Hugging Face `tokenizers` library.

  <out>/corpus.json            the texts every tokenizer encodes (prose, code, numbers,
                               whitespace runs, tabs, newlines, CJK, emoji, combining marks,
                               special-token strings)
  <out>/trained/<style>.json   tokenizers trained here with the real library, one per style:
                               byte-level BPE (GPT-2-like), byte-level with a Llama-3-style Split
                               regex and ignore_merges, SentencePiece-style BPE with Metaspace,
                               with Prepend+Replace normalizers and byte_fallback, and with
                               fuse_unk and no byte fallback, Falcon's punctuation/digit
                               chain, StarCoder's single digits, BertPreTokenizer with
                               CharDelimiterSplit and "##" subwords; with added/special tokens that
                               carry lstrip/rstrip/normalized/single_word flags
  <out>/expected/<name>.json   for each trained tokenizer and each real one under
                               <shared>/tokenizers/: per text, the ids, tokens, offsets in
                               code points (as the Python binding reports them), the same
                               offsets in UTF-8 bytes (derived here), the special-token mask,
                               and decode() with and without skip_special_tokens

The real Llama 2 tokenizer.json stores merges as "a b" strings, three of which contain a
literal space inside a token ("   ", "     ", "▁  "); the library refuses to load it as is.
We load it after rewriting each such merge as the [left, right] pair whose parts and
concatenation are all in the vocabulary, taking the first space from the left that works:
the same rule our C++ loader documents. Those merges involve raw spaces, which the Llama 2
normalizer never leaves in a text, so the choice cannot change any encoding.
"""
import argparse
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

REAL = ["gpt2", "gpt-neox-20b", "phi-2", "llama2", "mistral-7b-v0.1", "clip-vit-base-patch32"]

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it? We'll see; they'd've "
    "gone.",
    "Attention manipulation (AtMan) perturbs the attention of one token at a time and "
    "measures how much the loss of the target changes.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x > 10:\n\t\tprint(f\"{x:>8.3f}\")\n",
    "int main() { std::vector<int> v{1, 2, 3}; return v.size() == 3 ? 0 : 1; }",
    "Numbers: 0 7 42 1234567890 3.14159 -2.5e-10 1,000,000 0x1F 2024-06-01",
    "   leading spaces, trailing spaces   ",
    "multiple     inner        spaces\t\ttabs\n\n\nnewlines \r\n crlf",
    "                                 a very long run of spaces",
    "日本語のテキストとカタカナ、漢字。中文也可以。한국어 문장입니다.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️ ✨",
    "Combining: cafe\u0301 nai\u0308ve e\u0301\u0301 a\u030a Z\u0335\u0321\u0322a\u0337lgo "
    "precomposed: café naïve Å",
    "Mixed: naïve café résumé Ελληνικά русский עברית العربية हिन्दी ไทย",
    "Specials: <s> start </s> end <unk> and <|endoftext|> mid<|endoftext|>text",
    "Added: <mask> masked  <sep>  separated and ok or okay or ok.",
    "UPPER lower MiXeD CaSe ÀÉÎ",
    "https://example.com/path?query=1&x=y#frag user@example.org",
    "",
    " ",
    "\n",
    "a",
    "\u00a0non-breaking\u2003em-space\u3000ideographic space",
    "tokens like ▁ and Ġ and <0x41> in the text",
]

TRAIN_EXTRA = [
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "for i in range(10):\n    total += values[i] * weights[i]\n",
    "Explanations are only useful if scores land on the right characters.",
] * 20

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def training_texts():
    return CORPUS + TRAIN_EXTRA


def added_tokens_with_flags():
    return [
        AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False),
        AddedToken("<sep>", lstrip=False, rstrip=True, special=True, normalized=False),
        AddedToken("ok", single_word=True, special=False, normalized=True),
        AddedToken("end", special=False, normalized=False),
    ]


def add_byte_fallback_tokens(tok: Tokenizer) -> Tokenizer:
    """Adds <0x00>..<0xFF> to a trained BPE vocabulary (what SentencePiece conversions have)."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    next_id = max(max(vocab.values()), max(t["id"] for t in data["added_tokens"])) + 1
    for b in range(256):
        name = f"<0x{b:02X}>"
        if name not in vocab:
            vocab[name] = next_id
            next_id += 1
    data["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(data))


def train_bytelevel(pre_tokenizer, special_tokens) -> Tokenizer:
    """Byte-level BPE (GPT-2's decoder and trimming post-processor) behind `pre_tokenizer`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok.add_tokens(added_tokens_with_flags())
    return tok


def train_bytelevel_gpt2() -> Tokenizer:
    return train_bytelevel(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])


def train_bytelevel_llama3() -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700,
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(data))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tok.add_tokens(added_tokens_with_flags())
    return tok


def train_bytelevel_falcon() -> Tokenizer:
    """Falcon's pre-tokenizer chain: contiguous punctuation runs split off before the GPT-2
    regex, then digit runs, then every three digits."""
    return train_bytelevel(pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False),
    ]), [">>TITLE<<", "<|endoftext|>"])


def train_bytelevel_starcoder() -> Tokenizer:
    """StarCoder's: every digit its own piece, then byte-level with the GPT-2 regex."""
    return train_bytelevel(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]), ["<|endoftext|>", "<fim_prefix>"])


def train_bert_pretokenizer() -> Tokenizer:
    """BPE behind BertPreTokenizer (whitespace removed, punctuation isolated), a
    CharDelimiterSplit and a removed-punctuation pass, continuing-subword prefix "##", an
    unknown token and no decoder (decode joins tokens with spaces)."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.CharDelimiterSplit("x"),
        pre_tokenizers.BertPreTokenizer(),
        pre_tokenizers.Punctuation(behavior="removed"),
    ])
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                                  continuing_subword_prefix="##", limit_alphabet=50,
                                  show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    tok.add_tokens(added_tokens_with_flags())
    return tok


def sentencepiece_decoder():
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                              decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)])


def train_sp_metaspace() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = sentencepiece_decoder()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=60, show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok = add_byte_fallback_tokens(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.add_tokens(added_tokens_with_flags())
    return tok


def train_sp_prepend() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = sentencepiece_decoder()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=60, show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok = add_byte_fallback_tokens(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B",
        special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.add_tokens(added_tokens_with_flags())
    return tok


def train_sp_unk() -> Tokenizer:
    """Metaspace (always prepend, split) with fuse_unk and no byte fallback: rare characters
    become one fused <unk> per run."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=40, show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.add_tokens(added_tokens_with_flags())
    return tok


TRAINED = {
    "bytelevel-gpt2": train_bytelevel_gpt2,
    "bytelevel-llama3": train_bytelevel_llama3,
    "sp-metaspace": train_sp_metaspace,
    "sp-prepend": train_sp_prepend,
    "sp-unk": train_sp_unk,
    "bytelevel-falcon": train_bytelevel_falcon,
    "bytelevel-starcoder": train_bytelevel_starcoder,
    "bert-pretokenizer": train_bert_pretokenizer,
}


def load_real(path: Path) -> Tokenizer:
    data = json.loads(path.read_text(encoding="utf-8"))
    merges = data.get("model", {}).get("merges")
    if merges and isinstance(merges[0], str) and any(m.count(" ") != 1 for m in merges):
        vocab = data["model"]["vocab"]

        def pair(m):
            parts = m.split(" ")
            if len(parts) == 2:
                return parts
            for i, c in enumerate(m):
                if c == " " and 0 < i < len(m) - 1:
                    a, b = m[:i], m[i + 1:]
                    if a in vocab and b in vocab and a + b in vocab:
                        return [a, b]
            raise ValueError(f"unresolvable merge {m!r}")

        data["model"]["merges"] = [pair(m) for m in merges]
        return Tokenizer.from_str(json.dumps(data))
    return Tokenizer.from_file(str(path))


def byte_offsets(text: str, offsets):
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    return [[starts[s], starts[e]] for s, e in offsets]


def expected(tok: Tokenizer):
    cases = []
    for text in CORPUS:
        for add_special in (True, False):
            enc = tok.encode(text, add_special_tokens=add_special)
            cases.append({
                "text": text,
                "add_special_tokens": add_special,
                "ids": enc.ids,
                "tokens": enc.tokens,
                "offsets": [list(o) for o in enc.offsets],
                "byte_offsets": byte_offsets(text, enc.offsets),
                "special_tokens_mask": enc.special_tokens_mask,
                "decoded": tok.decode(enc.ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(enc.ids, skip_special_tokens=True),
            })
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "cases": cases}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shared", required=True, type=Path, help="shared/data folder")
    args = parser.parse_args()

    write_json(args.out / "corpus.json", CORPUS)
    for name, train in TRAINED.items():
        tok = train()
        (args.out / "trained").mkdir(parents=True, exist_ok=True)
        tok.save(str(args.out / "trained" / f"{name}.json"))
        write_json(args.out / "expected" / f"{name}.json", expected(tok))
    for name in REAL:
        path = args.shared / "tokenizers" / name / "tokenizer.json"
        if not path.exists():
            raise SystemExit(f"missing real tokenizer file {path}")
        write_json(args.out / "expected" / f"{name}.json", expected(load_real(path)))


if __name__ == "__main__":
    main()
