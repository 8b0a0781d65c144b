"""Writes random-initialised LLaVA-1.5 models with transformers, and their expected outputs.

Each model is a LlavaForConditionalGeneration (a small CLIP vision tower, the two-layer
projector, a small Llama decoder; seed 0, initializer_range 0.2 so that attention is far from
uniform) saved with save_pretrained in <out>/<name>/, beside the preprocessor_config.json of
the slow (Pillow) CLIPImageProcessor that goes with it, and:

  images/<image>.png   generated test images of several sizes and aspect ratios
  cases.safetensors    inputs and expected outputs, computed by transformers itself:
    pixel_values        [N, 3, S, S] float32, the processor's output for the N images
    features            [N, P, H_text] get_image_features(pixel_values) (projected)
    tower.<l>           [N, 1 + G, H_vision] hidden_states[l] of the vision tower
    ids                 [1, T] a prompt with text around N images, the image token repeated P
                        times for each
    logits              [1, T, V] model(input_ids=ids, pixel_values=pixel_values).logits
    control.<name>.logits  the same with AtMan controls on image (and text) positions,
                        through the "atman" attention of make_model_cases.py, registered with
                        transformers' AttentionInterface, on the language model only
  cases.json           image names, model switches, image_token_id, tokens per image, where
                       each image's tokens are in the prompt (image_spans: [first, length]),
                       the controls (mode, layers, (position, factor) pairs)

Models:
  llava         vision_feature_layer -2, "default" selection (CLS dropped), quick_gelu,
                projector with bias; P = 16 (28 px images, 7 px patches)
  llava-full    vision_feature_layer [-3, -1] (concatenated), "full" selection (CLS kept),
                gelu in the tower, projector without bias; P = 17
  llava-floor   as "llava" but 30 px images with 4 px patches: 4 does not divide 30, the
                patch convolution floors to a 7 x 7 grid (P = 49) and the last 2 pixel rows
                and columns reach no patch

The "llava" model as transformers 5 saves a whole LLaVA folder:
  llava-processor-config  model.save_pretrained plus LlavaProcessor.save_pretrained (a small
                          tokenizer with "<image>"): the image processor's settings nested in
                          processor_config.json under "image_processor", no
                          preprocessor_config.json

Other weight layouts of the "llava" model (same config, renamed tensors):
  llava-hf-layout     the llava-hf hub checkpoints: vision_tower.vision_model.*
  llava-model-layout  transformers' in-memory names: model.language_model.*, lm_head.weight,
                      model.vision_tower.*, model.multi_modal_projector.*

Broken copies of "llava" for the error tests: broken-missing (no linear_2.bias), broken-extra
(an "image_newline" tensor no part uses), broken-extra-tower (a fourth tower layer's tensor),
broken-processor (a preprocessor_config.json cropping to 32 px for a 28 px tower).
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor, PreTrainedTokenizerFast)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import make_model_cases  # registers the "atman" attention; CONTROL switches it
from common import seed_everything, write_json

VOCAB = 64
IMAGE_TOKEN = 63
INIT = 0.2
IMAGE_SIZE = 28
PATCH = 7
# name -> (full selection, image size, patch size)
MODELS = {"llava": (False, IMAGE_SIZE, PATCH), "llava-full": (True, IMAGE_SIZE, PATCH),
          "llava-floor": (False, 30, 4)}


def llava_config(full: bool, image_size: int = IMAGE_SIZE, patch: int = PATCH) -> LlavaConfig:
    grid = image_size // patch
    vision = CLIPVisionConfig(
        hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
        image_size=image_size, patch_size=patch, projection_dim=16, initializer_range=INIT,
        hidden_act="gelu" if full else "quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=INIT,
        max_position_embeddings=256, tie_word_embeddings=False)
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        projector_hidden_act="gelu",
        vision_feature_layer=[-3, -1] if full else -2,
        vision_feature_select_strategy="full" if full else "default",
        multimodal_projector_bias=not full, image_seq_length=grid * grid + (1 if full else 0))


def make_images(rng):
    """name -> RGB PIL image: several sizes and aspect ratios, smooth and sharp content."""
    def gradient_noise(w, h):
        x = np.linspace(0, 255, w)[None, :, None]
        y = np.linspace(0, 255, h)[:, None, None]
        base = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                               np.broadcast_to((x + y) / 2, (h, w, 1))], -1)
        return np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)

    def blocks(w, h):
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack([((xx // 5) % 2) * 255, ((yy // 4) % 2) * 200,
                         ((xx + yy) % 13) * 19], -1).astype(np.uint8)

    return {
        "wide_40x30": Image.fromarray(gradient_noise(40, 30)),
        "tall_20x50": Image.fromarray(blocks(20, 50)),
        "square_64": Image.fromarray(gradient_noise(64, 64)),
    }


def prompt(g, n_images, per_image):
    """[1, T]: bos, text, then for each image P image tokens followed by some text."""
    parts = [torch.tensor([1]), torch.randint(3, IMAGE_TOKEN, (3,), generator=g)]
    for _ in range(n_images):
        parts.append(torch.full((per_image,), IMAGE_TOKEN))
        parts.append(torch.randint(3, IMAGE_TOKEN, (4,), generator=g))
    return torch.cat(parts)[None, :]


def controls(ids):
    """(name, mode, layers, [(position, factor)]) on image positions (and one text position)."""
    image = (ids[0] == IMAGE_TOKEN).nonzero().flatten().tolist()
    first, second = image[:len(image) // 2], image[len(image) // 2:]
    text_after = second[-1] + 1
    return [
        ("log_additive", "log_additive", None,
         [(first[0], 0.0), (first[5], 0.1), (second[3], 2.0), (second[7], 0.0)]),
        ("multiplicative", "multiplicative", None,
         [(first[2], 0.0), (first[9], 0.1), (second[0], 2.0)]),
        # one whole image suppressed, on layer 1 only
        ("log_additive-layer1-image", "log_additive", [1], [(p, 0.1) for p in first]),
        ("multiplicative-layer0-mixed", "multiplicative", [0],
         [(p, 0.0) for p in second[:4]] + [(text_after, 0.1)]),
    ]


@torch.no_grad()
def make_cases(model, processor, folder, images, g):
    config = model.config
    model.set_attn_implementation("eager")
    names = list(images)
    pixel_values = torch.cat([processor(images=Image.open(folder / "images" / f"{n}.png"),
                                        return_tensors="pt")["pixel_values"] for n in names])
    tensors = {"pixel_values": pixel_values}
    features = model.get_image_features(pixel_values=pixel_values).pooler_output
    features = torch.stack(list(features))
    tensors["features"] = features
    tower = model.model.vision_tower(pixel_values, output_hidden_states=True)
    layers = config.vision_config.num_hidden_layers
    assert len(tower.hidden_states) == layers + 1
    for l in range(layers + 1):
        tensors[f"tower.{l}"] = tower.hidden_states[l]

    per_image = features.shape[1]
    # The first two images in the prompt (the third is used for feature checks only).
    ids = prompt(g, 2, per_image)
    tensors["ids"] = ids
    prompt_pixels = pixel_values[:2]
    tensors["logits"] = model(input_ids=ids, pixel_values=prompt_pixels).logits

    cases = []
    model.model.language_model.set_attn_implementation("atman")
    plain = model(input_ids=ids, pixel_values=prompt_pixels).logits
    assert torch.allclose(plain, tensors["logits"], atol=1e-5), "atman != eager"
    for name, mode, layer_list, pairs in controls(ids):
        make_model_cases.CONTROL = {"mode": mode, "layers": layer_list,
                                    "factors": make_model_cases.dense_factors([pairs], ids.shape[1])}
        key = f"control.{name}.logits"
        tensors[key] = model(input_ids=ids, pixel_values=prompt_pixels).logits
        make_model_cases.CONTROL = None
        # The controls must matter, or the parity test could not fail.
        assert (tensors[key] - tensors["logits"]).abs().max() > 1e-2, key
        cases.append({"name": name, "mode": mode, "layers": layer_list,
                      "rows": [[[p, f] for p, f in pairs]]})
    model.set_attn_implementation("eager")
    # Runs of image tokens: [first index, length] per image in the prompt.
    is_image = np.concatenate([[0], (ids[0] == IMAGE_TOKEN).numpy().astype(int), [0]])
    starts = np.flatnonzero(np.diff(is_image) == 1)
    ends = np.flatnonzero(np.diff(is_image) == -1)
    meta = {
        "images": names, "prompt_images": names[:2], "cases": cases,
        "image_spans": [[int(a), int(b - a)] for a, b in zip(starts, ends)],
        "image_token_id": IMAGE_TOKEN, "tokens_per_image": per_image,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "image_size": config.vision_config.image_size, "patch_size": config.vision_config.patch_size,
    }
    return {k: v.contiguous() for k, v in tensors.items()}, meta


def save_with_processor(model, image_processor, folder: Path) -> None:
    """The whole folder as transformers 5 saves a LLaVA model with its LlavaProcessor."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    vocab["<image>"] = IMAGE_TOKEN
    del vocab[f"t{IMAGE_TOKEN}"]
    words = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=model.config.vision_config.patch_size,
                               vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                               image_token="<image>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # What the engine must cope with: the settings nested, no preprocessor_config.json.
    assert not (folder / "preprocessor_config.json").exists(), sorted(p.name for p in folder.iterdir())
    nested = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    assert nested["crop_size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, nested


def rename(tensors, rules):
    out = {}
    for name, t in tensors.items():
        for old, new in rules:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    for name, (full, image_size, patch) in MODELS.items():
        seed_everything(0)
        processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size})
        images = make_images(np.random.default_rng(0))
        model = LlavaForConditionalGeneration(llava_config(full, image_size, patch)).eval()
        folder = args.out / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if name == "llava":
            save_with_processor(model, processor, args.out / "llava-processor-config")
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for image_name, image in images.items():
            image.save(folder / "images" / f"{image_name}.png")
        tensors, meta = make_cases(model, processor, folder, images, torch.Generator().manual_seed(1))
        save_file(tensors, str(folder / "cases.safetensors"))
        write_json(folder / "cases.json", meta)

    # The "llava" model under the other weight layouts.
    saved = load_file(str(args.out / "llava" / "model.safetensors"))
    assert "vision_tower.embeddings.patch_embedding.weight" in saved, sorted(saved)[:5]
    assert "language_model.model.embed_tokens.weight" in saved, sorted(saved)[:5]
    layouts = {
        "llava-hf-layout": [("vision_tower.", "vision_tower.vision_model.")],
        "llava-model-layout": [("language_model.model.", "model.language_model."),
                               ("language_model.lm_head.", "lm_head."),
                               ("vision_tower.", "model.vision_tower."),
                               ("multi_modal_projector.", "model.multi_modal_projector.")],
    }
    for folder_name, rules in layouts.items():
        folder = args.out / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(rename(saved, rules), str(folder / "model.safetensors"), metadata={"format": "pt"})
        for f in ("config.json", "preprocessor_config.json"):
            shutil.copy(args.out / "llava" / f, folder / f)

    # Broken copies for the error tests.
    missing = dict(saved)
    del missing["multi_modal_projector.linear_2.bias"]
    extra = dict(saved)
    extra["image_newline"] = torch.zeros(32)
    extra_tower = dict(saved)
    extra_tower["vision_tower.encoder.layers.3.mlp.fc1.bias"] = torch.zeros(40)
    for folder_name, tensors in (("broken-missing", missing), ("broken-extra", extra),
                                 ("broken-extra-tower", extra_tower), ("broken-processor", saved)):
        folder = args.out / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(args.out / "llava" / "config.json", folder / "config.json")
    # A processor whose crop (32 px) is not the tower's image_size (28 px).
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                          ).save_pretrained(args.out / "broken-processor")


if __name__ == "__main__":
    main()
