"""Writes models, tokenizers and reference explanations for the engine's exactness tests.

  <out>/<model>/          a random-initialised transformers model (save_pretrained) with a
                          byte-level BPE tokenizer.json trained here by the tokenizers library
  <out>/<model>/cases.json  requests (prompt items, target, options) and what the plain
                          reference (atman_reference.py) says: units, raw relevance, scores

Models: "llama" (grouped-query attention; the tokenizer's post-processor adds a BOS) and
"gpt2" (no BOS). Cases cover every text granularity, both manipulation modes, conceptual
suppression, both target granularities, postprocessing and normalisation, a layer subset,
factor 0, and a prompt mixing text and raw token ids.
"""
import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from atman_reference import explain
from common import seed_everything, write_json

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was not amused!",
    "Tom lives in Rome. Anna lives in Paris. Where does Anna live? Paris.",
    "Rivers flow to the sea; mountains rise to the sky; people walk between them.",
    "A red triangle sits left of a blue square.\n\nThe green circle is at the top.",
    "def add(a, b):\n    return a + b\n",
]

PROMPT_A = "Tom lives in Rome. Anna lives in Paris.\n\nWhere does Anna live? She lives in"
PROMPT_B = "Rivers flow to the sea; mountains rise to the sky; people walk between them"


def train_tokenizer(bos: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def model_for(name: str, vocab: int):
    if name == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            initializer_range=0.2, tie_word_embeddings=False))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=48, n_layer=3, n_head=4,
                                      n_positions=256, initializer_range=0.2,
                                      bos_token_id=0, eos_token_id=1))


def cases(name: str):
    yield "token-log_additive", [{"text": PROMPT_A}], " Paris", {"text_granularity": "token"}
    yield "word-multiplicative", [{"text": PROMPT_A}], " Paris", {
        "text_granularity": "word", "mode": "multiplicative"}
    yield "sentence-target_token", [{"text": PROMPT_A}], " Paris. Yes", {
        "text_granularity": "sentence", "target_granularity": "token"}
    yield "paragraph-removal-layer1", [{"text": PROMPT_A}], " Paris", {
        "text_granularity": "paragraph", "control_factor": 0.0, "layers": [1]}
    yield "custom-suppression-token", [{"text": PROMPT_B}], " and", {
        "text_granularity": "custom", "custom_delimiter": ";", "mode": "multiplicative",
        "contextual_control_threshold": 0.2, "target_granularity": "token"}
    yield "auto-square-normalize", [{"text": PROMPT_A}], " Paris", {
        "auto_max_units": 6, "contextual_control_threshold": 0.25, "postprocessing": "square",
        "normalize": True}
    yield "token-suppression-amplify", [{"text": PROMPT_B}], " them", {
        "text_granularity": "token", "control_factor": 2.0, "contextual_control_threshold": 0.3,
        "postprocessing": "absolute", "target_granularity": "token"}
    yield "mixed-items", [{"text": "Tom lives in Rome."}, {"tokens": [5, 17, 42, 7]},
                          {"text": " Where does Tom live?"}], " Rome", {"text_granularity": "word"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    for name in ("llama", "gpt2"):
        seed_everything(0)
        tokenizer = train_tokenizer(bos=name == "llama")
        model = model_for(name, tokenizer.get_vocab_size()).eval()
        folder = args.out / name
        model.save_pretrained(folder)
        tokenizer.save(str(folder / "tokenizer.json"))
        out = []
        for case, prompt, target, options in cases(name):
            ref = explain(model, tokenizer, prompt, target, options)
            if options.get("contextual_control_threshold") is not None:
                # Conceptual suppression must reach beyond the unit, or the test proves nothing.
                assert ref["similarity_suppressed"] > 0, (name, case)
            out.append({"name": case, "prompt": prompt, "target": target, "options": options,
                        "expected": ref})
        # Greedy continuation (no end-of-text token), for the empty-target path.
        ids = tokenizer.encode(PROMPT_A).ids
        greedy = []
        with torch.no_grad():
            for _ in range(4):
                next_id = int(model(input_ids=torch.tensor([ids + greedy])).logits[0, -1].argmax())
                greedy.append(next_id)
        write_json(folder / "cases.json", {"cases": out, "greedy": {"prompt": PROMPT_A, "ids": greedy}})


if __name__ == "__main__":
    main()
