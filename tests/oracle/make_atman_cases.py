"""Writes models, tokenizers and reference explanations for the engine's exactness tests.

  <out>/<model>/          a random-initialised transformers model (save_pretrained) with a
                          byte-level BPE tokenizer.json trained here by the tokenizers library
  <out>/<model>/cases.json  requests (prompt items, target, options) and what the plain
                          reference (atman_reference.py) says: units, raw relevance, scores

Models: "llama" (grouped-query attention; the tokenizer's post-processor adds a BOS), "gpt2"
(no BOS), "gemma2" (soft-capped attention and logits, sliding windows on layers 0 and 2,
randomised (1 + w) norms; BOS), "llama-dynamic" (dynamic NTK rotary, factor 5, beyond
max_position_embeddings 12: every case but "dynamic-short" is longer, up to 50 positions
within the context of 5 x 12; each explanation's reference starts from a fresh rotary
module), "phi3" (fused projections, LongRoPE with original_max_position_embeddings 8: every
case but "longrope-short" is longer, so its unperturbed pass, its cached prefix and its rows,
however few positions they recompute, all use the long factors; "longrope-short" stays within
8 and uses the short ones) and "llava" (a CLIP tower on 28 px images with 7 px patches, a 4x4 grid, and a
Llama decoder; images of other aspect ratios so that the centre crop cuts them), and "llava-full"
(the same with vision_feature_select_strategy "full": each image's class token is an image
token too, and belongs to the whole-image unit only; its "image-whole-removal" scores differ
from the class token left out of every unit by a stated margin), and "llava-next" (LLaVA-NeXT's anyres:
the same tower on 28 px views, pinpoints [[28, 56], [56, 28], [56, 56], [84, 28]], so the wide image
is a base view + 1x2 tiles and the tall one a base view + 2x1 tiles, each image's token count set by
its size; image units group base-view and tile tokens by region of the original, the reference
redoing that rule in atman_reference.py). Cases cover every text granularity, both manipulation modes, conceptual
suppression, both target granularities, postprocessing and normalisation, a layer subset,
factor 0, and a prompt mixing text and raw token ids.
"""
import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
import numpy as np
from PIL import Image
from transformers import (CLIPVisionConfig, Gemma2Config, Gemma2ForCausalLM, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, Phi3Config, Phi3ForCausalLM)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from atman_reference import explain, steered_greedy
from make_model_cases import randomise_norms
from common import seed_everything, write_json

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was not amused!",
    "Tom lives in Rome. Anna lives in Paris. Where does Anna live? Paris.",
    "Rivers flow to the sea; mountains rise to the sky; people walk between them.",
    "A red triangle sits left of a blue square.\n\nThe green circle is at the top.",
    "def add(a, b):\n    return a + b\n",
]

PROMPT_A = "Tom lives in Rome. Anna lives in Paris.\n\nWhere does Anna live? She lives in"
PHI3_ORIGINAL = 8
DYNAMIC_MAX = 12
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
    if name == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(
            vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=16,
            attn_logit_softcapping=2.0, final_logit_softcapping=5.0, sliding_window=8,
            max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=True,
            pad_token_id=0, bos_token_id=0, eos_token_id=1))
        randomise_norms(model)
        return model
    if name == "phi3":
        return Phi3ForCausalLM(Phi3Config(
            vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            original_max_position_embeddings=PHI3_ORIGINAL, initializer_range=0.2,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                             "short_factor": [1.0, 1.2, 1.5, 2.0, 2.6, 3.3],
                             "long_factor": [1.5, 2.5, 4.0, 6.5, 9.0, 14.0]},
            pad_token_id=None, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False))
    if name == "llama-dynamic":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=DYNAMIC_MAX,
            initializer_range=0.2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 5.0}))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=48, n_layer=3, n_head=4,
                                      n_positions=256, initializer_range=0.2,
                                      bos_token_id=0, eos_token_id=1))


def llava_model(tokenizer, full=False):
    return LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=28, patch_size=7,
                                       projection_dim=16, initializer_range=0.2,
                                       hidden_act="quick_gelu"),
        text_config=LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=48,
                                intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256,
                                initializer_range=0.2, tie_word_embeddings=False),
        image_token_index=tokenizer.token_to_id("<image>"), projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="full" if full else "default",
        image_seq_length=17 if full else 16))


NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28]]


def llava_next_model(tokenizer):
    """LLaVA-1.5's "default" model with anyres: the same tower, projector and decoder sizes."""
    base = llava_model(tokenizer).config
    return LlavaNextForConditionalGeneration(LlavaNextConfig(
        vision_config=base.vision_config, text_config=base.text_config,
        image_token_index=base.image_token_index, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=NEXT_PINPOINTS))


def write_images(folder: Path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:40]
    wide = np.stack([xx * 6, yy * 9, ((xx // 7 + yy // 7) % 2) * 255], -1)
    yy, xx = np.mgrid[0:35, 0:21]
    tall = np.clip(np.stack([xx * 12, yy * 7, 128 + 0 * xx], -1) + rng.normal(0, 20, (35, 21, 3)), 0, 255)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, pixels in (("wide_40x28", wide), ("tall_21x35", tall)):
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "images" / f"{name}.png")


def llava_cases(folder: Path, full: bool = False, next_: bool = False):
    wide = {"image": "wide_40x28.png", "path": str(folder / "images" / "wide_40x28.png")}
    tall = {"image": "tall_21x35.png", "path": str(folder / "images" / "tall_21x35.png")}
    yield "image-native", [{"text": "Look: "}, dict(wide), {"text": " What colour is it?"}], " red", {
        "text_granularity": "word", "image_granularity": "native"}
    if full:
        # Whole images (granularity 1, or a 1 x 1 grid): the class token is in the image's unit.
        yield "image-whole-removal", [{"text": "Tom lives in Rome."}, dict(tall)], " Rome", {
            "text_granularity": "sentence", "image_granularity": "1", "control_factor": 0.0}
        yield "images-grid-1x1-multiplicative", [dict(wide), {"text": " and "}, dict(tall)], " two red", {
            "text_granularity": "word", "image_granularity": "grid", "image_rows": 1,
            "image_cols": 1, "mode": "multiplicative"}
        return
    yield "image-grid-suppression", [dict(wide), {"text": " Where does Anna live?"}], " Paris", {
        "text_granularity": "word", "image_granularity": "grid", "image_rows": 2, "image_cols": 3,
        "contextual_control_threshold": 0.3}
    yield "images-3x3-multiplicative-token", [dict(tall), {"text": " and "}, dict(wide)], " two red", {
        "text_granularity": "token", "image_granularity": "3x3", "mode": "multiplicative",
        "target_granularity": "token"}
    yield "image-whole-removal", [{"text": "Tom lives in Rome."}, dict(tall)], " Rome", {
        "text_granularity": "sentence", "image_granularity": "1", "control_factor": 0.0}
    if next_:
        # Finer than the base view's 4 x 4: regions hold tile tokens only, some none at all.
        yield "image-grid-fine-multiplicative", [dict(tall), {"text": " Where does Anna live?"}], \
            " Paris", {"text_granularity": "word", "image_granularity": "grid", "image_rows": 6,
                       "image_cols": 4, "mode": "multiplicative"}


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
    # Target tokens that repeat prompt words: conceptual suppression spreads into them too
    # (every other input position, not only the prompt's).
    yield "suppression-into-target", [{"text": "Tom lives in Rome. Anna lives in"}], \
        " Paris. Tom lives in Rome", {"text_granularity": "word", "contextual_control_threshold": 0.5}
    yield "suppression-into-target-token", [{"text": "Tom lives in Rome. Anna lives in"}], \
        " Rome. Tom lives in Rome", {"text_granularity": "word", "mode": "multiplicative",
                                     "contextual_control_threshold": 0.5, "target_granularity": "token"}
    if name == "phi3":
        # Prompt and target within original_max_position_embeddings: the short factors.
        yield "longrope-short", [{"text": "Tom lives in"}], " Rome", {"text_granularity": "token"}
    if name == "llama-dynamic":
        # Prompt and target within max_position_embeddings: theta's own frequencies.
        yield "dynamic-short", [{"text": "Tom lives in"}], " Rome", {"text_granularity": "token"}


def reset_dynamic_rope(model) -> None:
    """transformers' dynamic rotary keeps the largest length it has seen; each explanation
    starts from a fresh module, as a freshly loaded model would (docs/model.md)."""
    for module in model.modules():
        if "dynamic" in str(getattr(module, "rope_type", "")):
            module.register_buffer("inv_freq", module.original_inv_freq.clone(), persistent=False)
            module.max_seq_len_cached = module.original_max_seq_len


# Cases whose scores must differ from the old rule (conceptual suppression into prompt
# positions only) by at least this fraction of their largest |score|, or they prove nothing.
SPREAD_CASES = ("suppression-into-target", "suppression-into-target-token")
SPREAD_MARGIN = 0.2
# llava-full cases whose image units are whole images: their scores must differ from the class
# token left out of every unit by this fraction of their largest |score|.
CLASS_TOKEN_CASES = ("image-whole-removal", "images-grid-1x1-multiplicative")
CLASS_TOKEN_MARGIN = 0.05


def generation_cases(name: str, folder: Path):
    """(name, prompt, controls on whole items, mode) for steered greedy generation."""
    if name.startswith("llava"):
        wide = {"image": "wide_40x28.png", "path": str(folder / "images" / "wide_40x28.png")}
        prompt = [{"text": "Look: "}, wide, {"text": " What colour is it?"}]
        yield "image-plain", [dict(i) for i in prompt], [], "log_additive"
        yield "image-removed", [dict(i) for i in prompt], [{"item": 1, "factor": 0.0}], "log_additive"
        yield "image-amplified-multiplicative", [dict(i) for i in prompt], [{"item": 1, "factor": 3.0}], \
            "multiplicative"
        return
    prompt = [{"text": "Tom lives in Rome."}, {"text": " Anna lives in Paris. Where does Anna live? She lives in"}]
    yield "text-plain", prompt, [], "log_additive"
    yield "text-suppressed", prompt, [{"item": 0, "factor": 0.05}], "log_additive"
    yield "text-amplified-multiplicative", prompt, [{"item": 0, "factor": 2.5}], "multiplicative"
    yield "tokens-removed", [{"text": "Tom lives in"}, {"tokens": [5, 17, 42, 7]}, {"text": " and"}], \
        [{"item": 1, "factor": 0.0}], "log_additive"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--models", nargs="*",
                        default=["llama", "gpt2", "gemma2", "phi3", "llama-dynamic", "llava",
                                 "llava-full", "llava-next"],
                        help="write only these models (default: all)")
    args = parser.parse_args()
    for name in args.models:
        seed_everything(0)
        tokenizer = train_tokenizer(bos=name != "gpt2")
        folder = args.out / name
        processor = None
        if name == "llava-next":
            tokenizer.add_special_tokens(["<image>"])
            model = llava_next_model(tokenizer).eval()
            processor = LlavaNextImageProcessorPil(
                size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                image_grid_pinpoints=NEXT_PINPOINTS)
            processor.save_pretrained(folder)
            write_images(folder)
            case_list = llava_cases(folder, next_=True)
        elif name.startswith("llava"):
            full = name == "llava-full"
            tokenizer.add_special_tokens(["<image>"])
            model = llava_model(tokenizer, full).eval()
            processor = CLIPImageProcessorPil(size={"shortest_edge": 28},
                                              crop_size={"height": 28, "width": 28})
            processor.save_pretrained(folder)
            write_images(folder)
            case_list = llava_cases(folder, full)
        else:
            model = model_for(name, tokenizer.get_vocab_size()).eval()
            case_list = cases(name)
        model.save_pretrained(folder)
        tokenizer.save(str(folder / "tokenizer.json"))
        out = []
        for case, prompt, target, options in case_list:
            limit = {"phi3": PHI3_ORIGINAL, "llama-dynamic": DYNAMIC_MAX}.get(name)
            if limit is not None and all("text" in item for item in prompt):
                # The model's input: BOS, the prompt items and the target without its last token.
                plain = lambda t: len(tokenizer.encode(t, add_special_tokens=False).ids)
                length = (1 + sum(plain(item["text"]) for item in prompt) + plain(target) - 1)
                short = case in ("longrope-short", "dynamic-short")
                assert (length <= limit) == short, (case, length)
            reset_dynamic_rope(model)
            ref = explain(model, tokenizer, prompt, target, options, processor)
            if options.get("contextual_control_threshold") is not None:
                # Conceptual suppression must reach beyond the unit, or the test proves nothing.
                assert ref["similarity_suppressed"] > 0, (name, case)
            if case in SPREAD_CASES:
                old = explain(model, tokenizer, prompt, target, options, processor,
                              spread_to_prompt_only=True)
                largest = max(abs(v) for row in ref["scores"] for v in row)
                gap = max(abs(a - b) for ra, rb in zip(ref["scores"], old["scores"])
                          for a, b in zip(ra, rb))
                assert gap >= SPREAD_MARGIN * largest, (name, case, gap, largest)
                ref["prompt_only_scores"] = old["scores"]
                ref["spread_margin"] = SPREAD_MARGIN
            if name == "llava-full" and case in CLASS_TOKEN_CASES:
                old = explain(model, tokenizer, prompt, target, options, processor,
                              class_token_in_whole=False)
                largest = max(abs(v) for row in ref["scores"] for v in row)
                gap = max(abs(a - b) for ra, rb in zip(ref["scores"], old["scores"])
                          for a, b in zip(ra, rb))
                assert gap >= CLASS_TOKEN_MARGIN * largest, (name, case, gap, largest)
                ref["class_token_outside_scores"] = old["scores"]
                ref["class_token_margin"] = CLASS_TOKEN_MARGIN
            for item in prompt:
                item.pop("path", None)
            out.append({"name": case, "prompt": prompt, "target": target, "options": options,
                        "expected": ref})
        result = {"cases": out}
        if name == "llama-dynamic":
            # Explanations only: the references below recompute every generation step in
            # full, which a dynamic rotary beyond its limit does not equal to a cached decode.
            write_json(folder / "cases.json", result)
            continue
        if not name.startswith("llava"):
            # Greedy continuation (no end-of-text token), for the empty-target path.
            ids = tokenizer.encode(PROMPT_A).ids
            greedy = []
            with torch.no_grad():
                for _ in range(4):
                    next_id = int(model(input_ids=torch.tensor([ids + greedy])).logits[0, -1].argmax())
                    greedy.append(next_id)
            result["greedy"] = {"prompt": PROMPT_A, "ids": greedy}
        # Steered generation (Generate): greedy tokens with attention controls on whole prompt
        # items, from the patched reference (a full pass per step, no cache).
        result["generation"] = []
        for case, prompt, controls, mode in generation_cases(name, folder):
            ids = steered_greedy(model, tokenizer, prompt, controls, 6, mode, processor)
            for item in prompt:
                item.pop("path", None)
            result["generation"].append({"name": case, "prompt": prompt, "controls": controls,
                                         "mode": mode, "ids": ids})
        write_json(folder / "cases.json", result)


if __name__ == "__main__":
    main()
