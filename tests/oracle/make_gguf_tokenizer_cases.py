"""GGUF tokenizers made from real Hugging Face tokenizers, and what transformers' GGUF
tokenizer does with them on the tokenizer corpus.

  <out>/llama.gguf    tokenizer.ggml.model "llama" (SentencePiece BPE) from the Llama 2
                      tokenizer.json in shared/data: tokens, scores (-id for normal tokens, as
                      llama.cpp's convert writes SentencePiece scores), token types (unknown,
                      control, byte), no merges (llama.cpp files derive them from the scores)
  <out>/qwen2-pre.gguf
                      tokenizer.ggml.model "gpt2" with tokenizer.ggml.pre "qwen2" (the split
                      regex transformers picks by name) from the GPT-2 tokenizer's vocabulary
                      and merges, with add_bos_token set
  <out>/manifest.json {file: [{"text", "ids", "offsets", "decoded"}]}
"""
import argparse
import json
from pathlib import Path

from gguf import GGUFWriter, TokenType
from transformers import AutoTokenizer

from common import add_bpe_tokenizer, write_json
from make_tokenizer_cases import CORPUS


def write(path: Path, fill) -> None:
    writer = GGUFWriter(str(path), "llama")
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama(shared: Path, path: Path) -> None:
    source = json.loads((shared / "tokenizers" / "llama2" / "tokenizer.json").read_text())
    vocab = source["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    types, scores = [], []
    for index, token in enumerate(tokens):
        if token == "<unk>":
            types.append(TokenType.UNKNOWN)
        elif token in ("<s>", "</s>"):
            types.append(TokenType.CONTROL)
        elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
        scores.append(0.0 if types[-1] != TokenType.NORMAL else -float(index))

    def fill(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
    write(path, fill)


def qwen2_pre(shared: Path, path: Path) -> None:
    source = json.loads((shared / "tokenizers" / "gpt2" / "tokenizer.json").read_text())

    def fill(writer):
        add_bpe_tokenizer(writer, source, "qwen2")
        writer.add_add_bos_token(True)
        writer.add_chat_template("{{ messages }}")
    write(path, fill)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shared", required=True, type=Path, help="shared/data folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    llama(args.shared, args.out / "llama.gguf")
    qwen2_pre(args.shared, args.out / "qwen2-pre.gguf")
    manifest = {}
    for name in ("llama.gguf", "qwen2-pre.gguf"):
        tokenizer = AutoTokenizer.from_pretrained(str(args.out), gguf_file=name)
        cases = []
        for text in CORPUS:
            enc = tokenizer(text, return_offsets_mapping=True)
            cases.append({"text": text, "ids": enc.input_ids,
                          "offsets": [list(o) for o in enc.offset_mapping],
                          "decoded": tokenizer.decode(enc.input_ids)})
        manifest[name] = {"cases": cases, "vocab_size": len(tokenizer)}
    write_json(args.out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
