"""The shipped default model (models/default/) loads offline with transformers and answers a
fresh held-out sample of each task (tools/default_model/tasks.py) with >= 95% accuracy.

The sample uses a seed that neither training nor its held-out evaluation used. Answers are
produced the way a user of transformers would: LlavaProcessor + greedy `generate`.
ATMAN_DEFAULT_MODEL overrides the model folder (to check a fresh training run before shipping).

Our engine on the same sample: atman-explain (ATMAN_EXPLAIN, set by ctest) reports the
unperturbed log-probability of each answer, which must equal transformers' to 1e-4.
"""

import dataclasses
import json
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

sys.path.insert(0, str(ROOT / "bench" / "fidelity"))
import pipeline  # noqa: E402

MODEL_DIR = pathlib.Path(os.environ.get("ATMAN_DEFAULT_MODEL", ROOT / "models" / "default"))
SAMPLE_SEED = 424242  # training uses --seed 0 (stream 0, held-out 1000, tokenizer corpus 1)
SAMPLE_PER_TASK = 100
MIN_ACCURACY = 0.95
ENGINE_SAMPLE_PER_TASK = 8
EXPLAIN = pathlib.Path(os.environ.get("ATMAN_EXPLAIN", ROOT / "build" / "tools" / "atman-explain"))


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
    print(f"{task}: accuracy {accuracy:.3f} on {len(items)} fresh items")
    assert accuracy >= MIN_ACCURACY, f"{task}: {accuracy:.2f}; first misses {wrong[:5]}"


def test_engine_log_probs_match_transformers(tmp_path):
    """Log-probabilities from our engine (atman-explain, the C++ runtime) equal transformers'
    on a fresh sample of every task, for the right answer and for two wrong answer words (the
    trained model gives its answers probability ~1, log p ~0, so wrong words are what checks
    the logits); the few coarse units keep it quick."""
    assert EXPLAIN.is_file(), f"no atman-explain at {EXPLAIN} (ATMAN_EXPLAIN)"
    hf = pipeline.HfModel(MODEL_DIR)
    engine = pipeline.Engine(EXPLAIN, MODEL_DIR, ("--no-warmup",))
    words = [" " + w for w in tasks.ANSWER_WORDS]
    largest, checked = 0.0, []
    try:
        for task in tasks.TASKS:
            for n, item in enumerate(tasks.generate(task, ENGINE_SAMPLE_PER_TASK, SAMPLE_SEED)):
                image = None
                if item.image is not None:
                    image = tmp_path / f"{task}-{n}.png"
                    Image.fromarray(item.image).save(image)
                at = words.index(item.answer)
                for target in (item.answer, words[(at + 1) % len(words)],
                               words[(at + 5) % len(words)]):
                    probe = dataclasses.replace(item, answer=target)
                    request = pipeline.engine_request(probe, image, {
                        "text_granularity": "paragraph", "image_granularity": "1"})
                    answer, _ = engine.explain(request)
                    assert "error" not in answer, json.dumps(answer)
                    encoded = hf.encode(probe)
                    with torch.no_grad():
                        expected = float(hf.log_prob(encoded.embeds, encoded)[0])
                    ours = sum(answer["target_log_probs"])
                    assert abs(ours - expected) <= 1e-4 + 1e-5 * abs(expected), (
                        task, n, item.prompt, target, ours, expected)
                    largest = max(largest, abs(ours - expected))
                    checked.append(expected)
    finally:
        engine.close()
    assert min(checked) < -5, "no wrong answer had a low probability: nothing was checked"
    print(f"engine vs transformers on {len(checked)} targets (log p from {min(checked):.1f} to "
          f"{max(checked):.1e}): largest |difference| {largest:.2e}")
