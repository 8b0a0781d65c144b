"""Writes the request set of `atman soak` for the embedded default model (models/default):
ExplainRequests in protobuf's JSON mapping, one per line (the format `atman bench` and
`atman soak` read), to stdout or to --out.

The prompts are the model's own format (docs/default-model.md), drawn from
tools/default_model/tasks.py with a fixed seed, plus the picture of docs/examples
(docs/examples/shapes.png): fact questions with 2, 3 and 4 sentences at word, sentence, token
and auto granularity (one with an empty target, so the server generates the answer first), and
image questions (shapes alone, and an image with a caption) at tiles-3x3, native, whole and
2x2-grid granularity, one with the relevance tensors. `atman soak` also sends each prompt as a
Generate request and its text as a Tokenize request.

    ~/.cache/atman/venv/bin/python tests/soak/make_requests.py --out tests/soak/default-model.jsonl

The committed tests/soak/default-model.jsonl is this script's output; test_soak.py checks that
it still is.
"""
import argparse
import base64
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "default_model"))
import tasks  # noqa: E402

SEED = 11
MULTIPLICATIVE = "CONTROL_MODE_MULTIPLICATIVE"


def png(image) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def text_request(request_id: str, prompt: str, target: str, **options) -> dict:
    request = {"requestId": request_id, "prompt": [{"text": prompt}], "target": target}
    if options:
        request["options"] = options
    return request


def image_request(request_id: str, prompt: str, image: bytes, target: str, **options) -> dict:
    """`prompt` holds one "<image>": the items are the text before it, the image, the rest."""
    before, after = prompt.split(tasks.IMAGE_TOKEN)
    request = {"requestId": request_id,
               "prompt": [{"text": before}, {"image": b64(image)}, {"text": after}],
               "target": target}
    if options:
        request["options"] = options
    return request


def first(items, predicate):
    return next(i for i in items if predicate(i))


def requests() -> list[dict]:
    facts = tasks.generate("facts", 40, seed=SEED)
    shapes = tasks.generate("shapes", 40, seed=SEED)
    mixed = tasks.generate("mixed", 40, seed=SEED)

    def sentences(n):
        return lambda item: item.prompt.count(" lives in ") == n

    two = first(facts, sentences(2))
    three = first(facts, sentences(3))
    four = first(facts, sentences(4))
    other_two = [i for i in facts if sentences(2)(i)][1]
    count = first(shapes, lambda i: i.kind == "count")
    caption = first(mixed, lambda i: i.kind == "caption")
    in_image = first(mixed, lambda i: i.kind == "image")
    readme = ("<s> Tom lives in Rome. Anna lives in Paris.\nQuestion: Where does Anna live?\n"
              "Answer:")
    example_png = (ROOT / "docs" / "examples" / "shapes.png").read_bytes()
    return [
        text_request("soak-facts-readme-word", readme, " Paris",
                     textGranularity="TEXT_GRANULARITY_WORD", controlMode=MULTIPLICATIVE),
        text_request("soak-facts-2-word", two.prompt, two.answer,
                     textGranularity="TEXT_GRANULARITY_WORD"),
        text_request("soak-facts-3-sentence", three.prompt, three.answer,
                     textGranularity="TEXT_GRANULARITY_SENTENCE", controlMode=MULTIPLICATIVE),
        text_request("soak-facts-4-token", four.prompt, four.answer,
                     textGranularity="TEXT_GRANULARITY_TOKEN", controlMode=MULTIPLICATIVE),
        text_request("soak-facts-2-generated", other_two.prompt, "", maxNewTokens=2),
        image_request("soak-shapes-example-tiles", "<s><image>\nQuestion: What colour is the "
                      "square?\nAnswer:", example_png, " green",
                      imageGranularity="IMAGE_GRANULARITY_TILES_3X3", controlMode=MULTIPLICATIVE),
        image_request("soak-shapes-count-native", count.prompt, png(count.image), count.answer,
                      imageGranularity="IMAGE_GRANULARITY_NATIVE", controlMode=MULTIPLICATIVE),
        image_request("soak-mixed-caption-whole", caption.prompt, png(caption.image),
                      caption.answer, imageGranularity="IMAGE_GRANULARITY_WHOLE",
                      textGranularity="TEXT_GRANULARITY_WORD"),
        image_request("soak-mixed-image-grid", in_image.prompt, png(in_image.image),
                      in_image.answer, imageGranularity="IMAGE_GRANULARITY_GRID", imageRows=2,
                      imageCols=2, returnRelevanceTensor=True),
    ]


def jsonl() -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in requests())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args()
    text = jsonl()
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
