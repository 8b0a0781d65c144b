"""Writes tiny Qwen2-VL / Qwen2.5-VL models and the plain reference's AtMan explanations of
prompts with images (atman_reference.py: every perturbed pass a full forward pass of
transformers' Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration, M-RoPE
positions computed by the model itself, the "atman" attention on the language model only).

  <out>/<family>/             save_pretrained of a random model (make_qwen2_vl_cases.py's
                              shapes, the vocabulary of the tokenizer here), its
                              preprocessor_config.json (Qwen2VLImageProcessorPil, 6 to 12
                              merged tokens per image), tokenizer.json (byte-level BPE from
                              make_atman_cases.py plus <|vision_start|>, <|vision_end|>,
                              <|image_pad|>, <|video_pad|>), images/ (make_atman_cases.py's
                              wide_40x28 -> 84x84, 3x3 tokens; tall_21x35 -> 56x112, 4 rows x 2
                              columns: both resized without keeping the aspect ratio)
  <out>/<family>/cases.json   requests (prompt items, target, options) and the reference's
                              units, raw relevance, scores, and per image item its first
                              position (vision_start) and merged-token grid

Families: qwen2_vl (separate lm_head), qwen2_5_vl (tied embeddings, windowed vision attention).
Cases: image units native, 3x3, 1 (whole image, vision_start / vision_end included) and a 2x3
grid; text units word, token and sentence; log-additive (default) and multiplicative control;
conceptual suppression (contextual_control_threshold 0.6, which must spread to other
positions: asserted here).
"""
import argparse
from pathlib import Path

import torch
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from atman_reference import build_sequence, explain, qwen2_vl_inputs
from common import seed_everything, write_json
from make_atman_cases import train_tokenizer, write_images
from make_qwen2_vl_cases import randomise, text_config

SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
MIN_TOKENS, MAX_TOKENS = 6, 12


def model_for(family, tokenizer):
    names = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")
    ids = {name: tokenizer.token_to_id(token) for name, token in zip(names, SPECIAL)}
    text = dict(text_config(), vocab_size=tokenizer.get_vocab_size(), bos_token_id=None,
                eos_token_id=None)
    if family == "qwen2_vl":
        return Qwen2VLForConditionalGeneration(Qwen2VLConfig(
            text_config=text, tie_word_embeddings=False, **ids,
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2)))
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, tie_word_embeddings=True, **ids,
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=48,
                           num_heads=4, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])))


def cases(folder: Path):
    wide = {"image": "wide_40x28.png", "path": str(folder / "images" / "wide_40x28.png")}
    tall = {"image": "tall_21x35.png", "path": str(folder / "images" / "tall_21x35.png")}
    yield "image-native", [{"text": "Look: "}, dict(wide), {"text": " What colour is it?"}], " red", {
        "text_granularity": "word", "image_granularity": "native"}
    yield "images-3x3-multiplicative", [dict(tall), {"text": " and "}, dict(wide)], " two red", {
        "text_granularity": "token", "image_granularity": "3x3", "mode": "multiplicative"}
    yield "image-whole-removal", [{"text": "Tom lives in Rome."}, dict(tall)], " Rome", {
        "text_granularity": "sentence", "image_granularity": "1", "control_factor": 0.0}
    yield "image-whole-multiplicative", [dict(wide), {"text": " Where does Anna live?"}], " Paris", {
        "text_granularity": "word", "image_granularity": "1", "mode": "multiplicative"}
    # 2x3 regions on tall's 4x2 tokens: rows {0, 1} | {2, 3}, columns 0 | (none) | 1.
    yield "image-grid-2x3", [{"text": "Look: "}, dict(tall), {"text": " Where does Tom live?"}], " Rome", {
        "text_granularity": "word", "image_granularity": "grid", "image_rows": 2, "image_cols": 3}
    yield "image-native-token-multiplicative", [dict(tall), {"text": " Tom lives in"}], " Rome", {
        "text_granularity": "token", "image_granularity": "native", "mode": "multiplicative"}
    # Conceptual suppression (kappa 0.6): a unit's suppression spreads to every input position
    # whose embedding (the merged image rows at the pads) is at least that cosine-similar.
    yield "image-native-conceptual", [{"text": "Look: "}, dict(tall), {"text": " What colour is it?"}], " red", {
        "text_granularity": "word", "image_granularity": "native",
        "contextual_control_threshold": 0.6}


@torch.no_grad()
def check_positions(model, tokenizer, processor, prompt, target, base):
    """The reference lets the model compute its M-RoPE positions. Self-check: the unperturbed
    cross-entropies equal those under get_rope_index's positions passed explicitly (no stale
    rope_deltas between prompts), and differ under plain positions 0..L-1 (M-RoPE matters)."""
    image, inputs, _ = qwen2_vl_inputs(model, processor, prompt)
    ids, _ = build_sequence(tokenizer, prompt, True, image)
    target_ids = tokenizer.encode(target, add_special_tokens=False).ids
    input_ids = torch.tensor([ids + target_ids[:-1]])
    types = (input_ids == image["token_id"]).int()
    grid = inputs["image_grid_thw"]
    rope, _ = model.model.get_rope_index(input_ids, image_grid_thw=grid, mm_token_type_ids=types)
    plain = torch.arange(input_ids.shape[1])[None].expand(3, 1, -1)

    def cross_entropy(positions):
        logits = model(input_ids=input_ids, pixel_values=inputs["pixel_values"],
                       image_grid_thw=grid, mm_token_type_ids=types,
                       position_ids=positions).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        return torch.tensor([-logp[len(ids) - 1 + j, t].item() for j, t in enumerate(target_ids)])

    base = torch.tensor(base, dtype=torch.float64)
    assert (cross_entropy(rope) - base).abs().max() < 1e-6, "implicit positions are not M-RoPE's"
    assert (cross_entropy(plain) - base).abs().max() > 1e-3, "M-RoPE makes no difference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    for family in ("qwen2_vl", "qwen2_5_vl"):
        seed_everything(0)
        tokenizer = train_tokenizer(bos=False)
        tokenizer.add_special_tokens(SPECIAL)
        folder = args.out / family
        folder.mkdir(parents=True, exist_ok=True)
        model = model_for(family, tokenizer).eval()
        randomise(model)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(folder)
        tokenizer.save(str(folder / "tokenizer.json"))
        processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * MIN_TOKENS,
                                             max_pixels=28 * 28 * MAX_TOKENS)
        processor.save_pretrained(folder)
        write_images(folder)
        out = []
        for case, prompt, target, options in cases(folder):
            ref = explain(model, tokenizer, prompt, target, options, processor)
            if "contextual_control_threshold" in options:
                # The case must spread (else it would not tell the rule from none).
                assert ref["similarity_suppressed"] > 0, (family, case)
            check_positions(model, tokenizer, processor, prompt, target, ref["base_cross_entropy"])
            for item in prompt:
                item.pop("path", None)
            out.append({"name": case, "prompt": prompt, "target": target, "options": options,
                        "expected": ref})
        write_json(folder / "cases.json", {"cases": out})


if __name__ == "__main__":
    main()
