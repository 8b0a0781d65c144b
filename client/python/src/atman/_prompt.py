"""Prompts as plain Python values, turned into PromptItem messages before the call.

One item is: a str (text), a pathlib.Path / os.PathLike (an image file), bytes (encoded PNG,
JPEG or GIF), a PIL image (sent as PNG), a list / tuple / numpy array of ints (raw token ids),
or the explicit wrappers Image(...) and TokenIds(...). A prompt is one item or a list of items;
a list made only of ints is one token-id item. A plain str is always text, never a path.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence, Union

from atman._options import INT32_MAX, OptionError
from atman.v1 import atman_pb2 as pb


@dataclass(frozen=True)
class TokenIds:
    """Raw token ids, taken as they are (each in [0, vocab_size))."""
    ids: Sequence[int]


@dataclass(frozen=True)
class Image:
    """An image item: a path, encoded bytes (PNG, JPEG, GIF) or a PIL image."""
    source: Any


PromptItem = Union[str, bytes, "os.PathLike[str]", TokenIds, Image, Sequence[int], Any]
Prompt = Union[PromptItem, Sequence[PromptItem]]


def image_mime_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return ""


def _image_bytes(field: str, source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, os.PathLike):
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise OptionError(field, f"cannot read image file {os.fspath(source)}: "
                              f"{e.strerror}") from None
    elif type(source).__module__.startswith("PIL.") and hasattr(source, "save"):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise OptionError(field, f"{type(source).__name__} is not an image (path, bytes or "
                          "PIL image)")
    if not image_mime_type(data):
        raise OptionError(field, "not a PNG, JPEG or GIF image")
    return data


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    import numpy as np
    return isinstance(v, np.integer)


def _token_ids(field: str, ids: Any) -> pb.TokenIds:
    out = []
    for k, v in enumerate(ids):
        if not _is_int(v):
            raise OptionError(f"{field}[{k}]", f"{v!r} is not a token id")
        if not 0 <= int(v) <= INT32_MAX:
            raise OptionError(f"{field}[{k}]", f"{int(v)} is not in [0, {INT32_MAX}]")
        out.append(int(v))
    if not out:
        raise OptionError(field, "no token ids")
    return pb.TokenIds(ids=out)


def _item(i: int, value: Any) -> pb.PromptItem:
    field = f"prompt[{i}]"
    if isinstance(value, str):
        return pb.PromptItem(text=value)
    if isinstance(value, TokenIds):
        return pb.PromptItem(token_ids=_token_ids(field, value.ids))
    if isinstance(value, Image):
        return pb.PromptItem(image=_image_bytes(field, value.source))
    if isinstance(value, (bytes, bytearray, memoryview, os.PathLike)) or \
            type(value).__module__.startswith("PIL."):
        return pb.PromptItem(image=_image_bytes(field, value))
    if isinstance(value, pb.PromptItem):
        return value
    if _is_sequence(value):
        return pb.PromptItem(token_ids=_token_ids(field, value))
    raise OptionError(field, f"{type(value).__name__} is not a prompt item (str, image path, "
                      "bytes, PIL image or token ids)")


def _is_sequence(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    return type(value).__module__ == "numpy" and getattr(value, "ndim", 0) == 1


def prompt_items(prompt: Any) -> list[pb.PromptItem]:
    """The PromptItem messages of `prompt` (see the module comment)."""
    if _is_sequence(prompt) and len(prompt) and all(_is_int(v) for v in prompt):
        items = [pb.PromptItem(token_ids=_token_ids("prompt[0]", prompt))]
    elif isinstance(prompt, list) or isinstance(prompt, tuple):
        items = [_item(i, v) for i, v in enumerate(prompt)]
    else:
        items = [_item(0, prompt)]
    if not items:
        raise OptionError("prompt", "empty; give at least one item")
    return items
