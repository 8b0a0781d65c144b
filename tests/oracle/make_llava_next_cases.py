"""Writes a random-initialised LLaVA-NeXT model with transformers, and its expected outputs.

The model is a LlavaNextForConditionalGeneration (a small CLIP vision tower: 28 px views, 7 px
patches, so a 4x4 grid per view; the two-layer projector; image_newline; a small Llama
decoder; seed 0, initializer_range 0.2 so that attention is far from uniform; anyres
pinpoints [[28, 56], [56, 28], [56, 56], [84, 28]]) saved with save_pretrained in
<out>/llava-next/, beside the preprocessor_config.json of the slow (Pillow)
LlavaNextImageProcessorPil that goes with it, and:

  images/<image>.png   generated test images: landscape, tall (3x1 tiles), square
  cases.safetensors    inputs and expected outputs, computed by transformers itself:
    pixel_values.<i>    [1 + tiles, 3, 28, 28] float32, the processor's output for image i
    features.<i>        [L_i, H_text] the packed image features of image i (base view's 16
                        tokens, then the unpadded tile grid row by row, each row followed by
                        image_newline): get_image_features(...).pooler_output[i]
    ids                 [1, T] a prompt with text around the first two images, each image's
                        token repeated L_i times
    logits              [1, T, V] model(input_ids=ids, pixel_values, image_sizes).logits
    control.<name>.logits  the same with AtMan controls on image (and text) positions, through
                        make_model_cases.py's "atman" attention, on the language model only
  cases.json           image names and sizes [h, w], tokens per image, where each image's
                       tokens are in the prompt (image_spans: [first, length]), the controls

Broken copies for the error tests: <out>/broken-no-newline (image_newline missing) and
<out>/broken-extra (a tensor no part uses), each with the model's config.json.
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig,
                          LlavaNextForConditionalGeneration)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

import make_model_cases  # registers the "atman" attention; CONTROL switches it
from common import seed_everything, write_json
from make_llava_cases import make_images as llava_images

VOCAB = 64
IMAGE_TOKEN = 63
INIT = 0.2
IMAGE_SIZE = 28
PATCH = 7
PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28]]


def config() -> LlavaNextConfig:
    vision = CLIPVisionConfig(
        hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16, initializer_range=INIT,
        hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=INIT,
        max_position_embeddings=512, tie_word_embeddings=False)
    return LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=PINPOINTS)


def prompt(g, lengths):
    """[1, T]: bos, text, then for each image its L_i image tokens followed by some text."""
    parts = [torch.tensor([1]), torch.randint(3, IMAGE_TOKEN, (3,), generator=g)]
    for length in lengths:
        parts.append(torch.full((length,), IMAGE_TOKEN))
        parts.append(torch.randint(3, IMAGE_TOKEN, (4,), generator=g))
    return torch.cat(parts)[None, :]


def controls(ids, first_len):
    """(name, mode, layers, [(position, factor)]) on image positions (and one text position)."""
    image = (ids[0] == IMAGE_TOKEN).nonzero().flatten().tolist()
    first, second = image[:first_len], image[first_len:]
    text_after = second[-1] + 1
    return [
        # base-view tokens, tile tokens and a newline token of both images
        ("log_additive", "log_additive", None,
         [(first[0], 0.0), (first[20], 0.1), (first[16 + 8], 0.0), (second[3], 2.0),
          (second[30], 0.0)]),
        ("multiplicative", "multiplicative", None,
         [(first[2], 0.0), (first[40], 0.1), (second[0], 2.0)]),
        ("log_additive-layer1-image", "log_additive", [1], [(p, 0.1) for p in first]),
        ("multiplicative-layer0-mixed", "multiplicative", [0],
         [(p, 0.0) for p in second[:4]] + [(text_after, 0.1)]),
    ]


@torch.no_grad()
def make_cases(model, processor, folder, names):
    model.set_attn_implementation("eager")
    tensors = {}
    pixels, sizes = [], []
    for i, n in enumerate(names):
        out = processor(images=Image.open(folder / "images" / f"{n}.png"), return_tensors="pt")
        tensors[f"pixel_values.{i}"] = out["pixel_values"][0]
        pixels.append(out["pixel_values"][0])
        sizes.append(out["image_sizes"][0])
    lengths = []
    for i in range(len(names)):
        packed = model.get_image_features(pixel_values=pixels[i][None],
                                          image_sizes=sizes[i][None]).pooler_output[0]
        tensors[f"features.{i}"] = packed
        lengths.append(int(packed.shape[0]))

    # The first two images in the prompt.
    g = torch.Generator().manual_seed(1)
    ids = prompt(g, lengths[:2])
    tensors["ids"] = ids
    # A batch of two images padded to the same number of views, as the processor batches them.
    views = max(p.shape[0] for p in pixels[:2])
    batch = torch.stack([torch.cat([p, p.new_zeros(views - p.shape[0], *p.shape[1:])])
                         for p in pixels[:2]])
    image_sizes = torch.stack(sizes[:2])
    tensors["logits"] = model(input_ids=ids, pixel_values=batch, image_sizes=image_sizes).logits

    cases = []
    model.model.language_model.set_attn_implementation("atman")
    plain = model(input_ids=ids, pixel_values=batch, image_sizes=image_sizes).logits
    assert torch.allclose(plain, tensors["logits"], atol=1e-5), "atman != eager"
    for name, mode, layer_list, pairs in controls(ids, lengths[0]):
        make_model_cases.CONTROL = {"mode": mode, "layers": layer_list,
                                    "factors": make_model_cases.dense_factors([pairs], ids.shape[1])}
        key = f"control.{name}.logits"
        tensors[key] = model(input_ids=ids, pixel_values=batch, image_sizes=image_sizes).logits
        make_model_cases.CONTROL = None
        assert (tensors[key] - tensors["logits"]).abs().max() > 1e-2, key
        cases.append({"name": name, "mode": mode, "layers": layer_list,
                      "rows": [[[p, f] for p, f in pairs]]})
    model.set_attn_implementation("eager")
    is_image = np.concatenate([[0], (ids[0] == IMAGE_TOKEN).numpy().astype(int), [0]])
    starts = np.flatnonzero(np.diff(is_image) == 1)
    ends = np.flatnonzero(np.diff(is_image) == -1)
    meta = {
        "images": names, "image_sizes": [[int(v) for v in s] for s in sizes],
        "tokens_per_image": lengths, "views": [int(p.shape[0]) for p in pixels],
        "cases": cases, "image_spans": [[int(a), int(b - a)] for a, b in zip(starts, ends)],
        "image_token_id": IMAGE_TOKEN, "image_size": IMAGE_SIZE, "patch_size": PATCH,
        "image_grid_pinpoints": PINPOINTS,
    }
    return {k: v.contiguous() for k, v in tensors.items()}, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS)
    seed_everything(0)
    images = llava_images(np.random.default_rng(0))
    model = LlavaNextForConditionalGeneration(config()).eval()
    folder = args.out / "llava-next"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image_name, image in images.items():
        image.save(folder / "images" / f"{image_name}.png")
    tensors, meta = make_cases(model, processor, folder, list(images))
    save_file(tensors, str(folder / "cases.safetensors"))
    write_json(folder / "cases.json", meta)

    saved = load_file(str(folder / "model.safetensors"))
    assert "image_newline" in saved, sorted(saved)[:5]
    no_newline = {k: v for k, v in saved.items() if k != "image_newline"}
    extra = dict(saved, **{"multi_modal_projector.linear_3.weight": torch.zeros(2, 2),
                           "image_newline_2": torch.zeros(32)})
    for name, tensors in (("broken-no-newline", no_newline), ("broken-extra", extra)):
        broken = args.out / name
        broken.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(folder / "config.json", broken / "config.json")


if __name__ == "__main__":
    main()
