"""The shipped default model (models/default/) loads offline with transformers and answers a
fresh held-out sample of each task (tools/default_model/tasks.py) with >= 95% accuracy.

The sample uses a seed that neither training nor its held-out evaluation used. Answers are
produced the way a user of transformers would: LlavaProcessor + greedy `generate`.
ATMAN_DEFAULT_MODEL overrides the model folder (to check a fresh training run before shipping).
"""

import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "default_model"))
import tasks  # noqa: E402
import train  # noqa: E402

MODEL_DIR = pathlib.Path(os.environ.get("ATMAN_DEFAULT_MODEL", ROOT / "models" / "default"))
SAMPLE_SEED = 424242  # training uses --seed 0 (stream 0, held-out 1000, tokenizer corpus 1)
SAMPLE_PER_TASK = 100
MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def processor():
    return LlavaProcessor.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    m = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR)
    m.eval()
    return m


def _inputs(processor, items):
    texts = [it.prompt for it in items]
    images = [Image.fromarray(it.image) for it in items if it.image is not None]
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True)


def test_weights_are_float32_and_a_few_million(model):
    count = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= count <= 10_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_processor_matches_what_training_fed_the_model(processor):
    item = tasks.generate("mixed", 1, SAMPLE_SEED)[0]
    inputs = _inputs(processor, [item])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == tasks.GRID * tasks.GRID
    expected_ids, _, _ = train.encode(processor.tokenizer.backend_tokenizer, item)
    assert ids == expected_ids[: len(ids)]  # training appends answer + EOS
    expected_pixels = train.pixel_values(item.image)
    torch.testing.assert_close(inputs["pixel_values"][0], expected_pixels, atol=1e-6, rtol=0)


def test_every_answer_word_is_one_token(processor):
    for word in tasks.ANSWER_WORDS:
        assert len(processor.tokenizer(" " + word, add_special_tokens=False).input_ids) == 1, word


@pytest.mark.parametrize("task", tasks.TASKS)
def test_held_out_accuracy(task, processor, model):
    items = tasks.generate(task, SAMPLE_PER_TASK, SAMPLE_SEED)
    processor.tokenizer.padding_side = "left"
    right, wrong = 0, []
    for start in range(0, len(items), 50):
        chunk = items[start : start + 50]
        inputs = _inputs(processor, chunk)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1] :]
        for item, ids in zip(chunk, new.tolist()):
            text = processor.tokenizer.decode(ids, skip_special_tokens=False)
            answer = text.split(tasks.EOS)[0] if tasks.EOS in text else None
            if answer == item.answer:
                right += 1
            else:
                wrong.append((item.prompt, item.answer, text))
    accuracy = right / len(items)
    assert accuracy >= MIN_ACCURACY, f"{task}: {accuracy:.2f}; first misses {wrong[:5]}"
