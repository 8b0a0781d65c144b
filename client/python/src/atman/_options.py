"""Keyword options of explain() and generate(): their names and defaults are the API's
(proto/atman/v1/atman.proto, docs/api.md); values are checked here, before any call, and a bad
one raises OptionError naming the keyword. Enum options take the value's short name in any case
("word", "WORD"), its full proto name ("TEXT_GRANULARITY_WORD") or its number.

Only values that differ from the API default are written into the request, so a request built
here is the one a caller writing the protobuf by hand would send.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from atman.v1 import atman_pb2 as pb

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
_REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.:/@+=]*")


class OptionError(ValueError):
    """A bad option value, found before the call. `field` is the keyword (e.g. "control_factor",
    "controls[1].factor", "prompt[2]")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Control:
    """A steering control of generate(): scale attention to code points [start, start + length)
    of prompt item `item` (token indices for token-id items; the whole image for images) by
    `factor` (< 1 suppresses, > 1 amplifies, 0 removes). length 0: to the item's end."""
    item: int
    start: int = 0
    length: int = 0
    factor: float = 0.1


def _enum(field: str, value: Any, enum, prefix: str) -> int:
    names = {n[len(prefix):].lower(): v for n, v in enum.items() if not n.endswith("_UNSPECIFIED")}
    if isinstance(value, bool):
        raise OptionError(field, f"{value!r} is not one of {', '.join(names)}")
    if isinstance(value, int):
        if value in names.values():
            return value
    elif isinstance(value, str):
        key = value.lower()
        if key.startswith(prefix.lower()):
            key = key[len(prefix):]
        if key in names:
            return names[key]
    raise OptionError(field, f"{value!r} is not one of {', '.join(names)}")


def _int(field: str, value: Any, lo: int, hi: int = INT32_MAX) -> int:
    import numpy as np
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(field, f"{value!r} is not an integer")
    if not lo <= value <= hi:
        raise OptionError(field, f"{value} is not in [{lo}, {hi}]")
    return value


def _float(field: str, value: Any) -> float:
    if isinstance(value, bool):
        raise OptionError(field, f"{value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    import numpy as np
    if isinstance(value, (np.integer, np.floating)):
        return float(value)
    raise OptionError(field, f"{value!r} is not a number")


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(field, f"{value!r} is not True or False")
    return value


def _indices(field: str, value: Any, what: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise OptionError(field, f"{value!r} is not a list of {what} indices")
    return [_int(f"{field}[{i}]", v, 0) for i, v in enumerate(value)]


def _layers(field: str, value: Any) -> list[int]:
    return _indices(field, value, "layer")


def _request_id(value: Any) -> str:
    if not isinstance(value, str):
        raise OptionError("request_id", f"{value!r} is not a string")
    if len(value) > 128:
        raise OptionError("request_id", f"{len(value)} characters, at most 128")
    if not _REQUEST_ID.fullmatch(value):
        raise OptionError("request_id", "only letters, digits and -_.:/@+= are allowed")
    return value


# name: default (the API's).
EXPLAIN_DEFAULTS: dict[str, Any] = {
    "text_granularity": "auto", "custom_delimiter": "", "auto_max_units": 30,
    "image_granularity": "native", "image_rows": 0, "image_cols": 0, "control_factor": 0.1,
    "control_mode": "log_additive", "contextual_control_threshold": None,
    "control_token_overlap": "partial", "target_granularity": "complete",
    "postprocessing": "none", "normalize": False, "layers": (), "scored_items": (),
    "add_special_tokens": True, "max_new_tokens": 16, "max_forward_passes": 0, "return_relevance_tensor": False,
}

GENERATE_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 16, "temperature": 0.0, "top_k": 0, "top_p": 0.0, "seed": 0,
    "controls": (), "control_mode": "log_additive", "control_token_overlap": "partial",
    "layers": (), "add_special_tokens": True, "stop_at_eos": True,
}


def _unknown(options: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    for name in options:
        if name not in known:
            raise OptionError(name, f"unknown option; the options are {', '.join(known)}")


def explain_options(options: Mapping[str, Any]) -> pb.ExplainOptions:
    """The ExplainOptions message for keyword `options` (missing ones take the defaults)."""
    _unknown(options, EXPLAIN_DEFAULTS)
    o = {**EXPLAIN_DEFAULTS, **options}
    m = pb.ExplainOptions()
    tg = _enum("text_granularity", o["text_granularity"], pb.TextGranularity, "TEXT_GRANULARITY_")
    if tg != pb.TEXT_GRANULARITY_AUTO:
        m.text_granularity = tg
    if not isinstance(o["custom_delimiter"], str):
        raise OptionError("custom_delimiter", f"{o['custom_delimiter']!r} is not a string")
    if tg == pb.TEXT_GRANULARITY_CUSTOM and not o["custom_delimiter"]:
        raise OptionError("custom_delimiter", "required (non-empty) with text_granularity='custom'")
    m.custom_delimiter = o["custom_delimiter"]
    if (n := _int("auto_max_units", o["auto_max_units"], 1)) != 30:
        m.auto_max_units = n
    ig = _enum("image_granularity", o["image_granularity"], pb.ImageGranularity,
               "IMAGE_GRANULARITY_")
    if ig != pb.IMAGE_GRANULARITY_NATIVE:
        m.image_granularity = ig
    m.image_rows = _int("image_rows", o["image_rows"], 0)
    m.image_cols = _int("image_cols", o["image_cols"], 0)
    if ig == pb.IMAGE_GRANULARITY_GRID:
        for name in ("image_rows", "image_cols"):
            if getattr(m, name) < 1:
                raise OptionError(name, "must be >= 1 with image_granularity='grid'")
    f = _float("control_factor", o["control_factor"])
    if not (math.isfinite(f) and f >= 0):
        raise OptionError("control_factor", f"{f} is not a finite number >= 0")
    if f != 0.1:
        m.control_factor = f
    cm = _enum("control_mode", o["control_mode"], pb.ControlMode, "CONTROL_MODE_")
    if cm != pb.CONTROL_MODE_LOG_ADDITIVE:
        m.control_mode = cm
    if o["contextual_control_threshold"] is not None:
        t = _float("contextual_control_threshold", o["contextual_control_threshold"])
        if not 0 < t <= 1:
            raise OptionError("contextual_control_threshold", f"{t} is not in (0, 1]")
        m.contextual_control_threshold = t
    ov = _enum("control_token_overlap", o["control_token_overlap"], pb.ControlTokenOverlap,
               "CONTROL_TOKEN_OVERLAP_")
    if ov != pb.CONTROL_TOKEN_OVERLAP_PARTIAL:
        m.control_token_overlap = ov
    tgr = _enum("target_granularity", o["target_granularity"], pb.TargetGranularity,
                "TARGET_GRANULARITY_")
    if tgr != pb.TARGET_GRANULARITY_COMPLETE:
        m.target_granularity = tgr
    pp = _enum("postprocessing", o["postprocessing"], pb.Postprocessing, "POSTPROCESSING_")
    if pp != pb.POSTPROCESSING_NONE:
        m.postprocessing = pp
    m.normalize = _bool("normalize", o["normalize"])
    m.layers.extend(_layers("layers", o["layers"]))
    m.scored_items.extend(_indices("scored_items", o["scored_items"], "prompt item"))
    if not _bool("add_special_tokens", o["add_special_tokens"]):
        m.add_special_tokens = False
    if (n := _int("max_new_tokens", o["max_new_tokens"], 1)) != 16:
        m.max_new_tokens = n
    m.max_forward_passes = _int("max_forward_passes", o["max_forward_passes"], 0)
    m.return_relevance_tensor = _bool("return_relevance_tensor", o["return_relevance_tensor"])
    return m


def _control(i: int, c: Any) -> pb.AttentionControl:
    field = f"controls[{i}]"
    if isinstance(c, Mapping):
        try:
            c = Control(**c)
        except TypeError as e:
            raise OptionError(field, str(e)) from None
    elif isinstance(c, tuple):
        try:
            c = Control(*c)
        except TypeError as e:
            raise OptionError(field, str(e)) from None
    if not isinstance(c, Control):
        raise OptionError(field, f"{c!r} is not an atman.Control, a dict or a tuple")
    factor = _float(f"{field}.factor", c.factor)
    if not (math.isfinite(factor) and factor >= 0):
        raise OptionError(f"{field}.factor", f"{factor} is not a finite number >= 0")
    return pb.AttentionControl(item=_int(f"{field}.item", c.item, 0),
                               start=_int(f"{field}.start", c.start, 0),
                               length=_int(f"{field}.length", c.length, 0), factor=factor)


def generate_request(options: Mapping[str, Any]) -> pb.GenerateRequest:
    """A GenerateRequest without prompt and request id, from keyword `options`."""
    _unknown(options, GENERATE_DEFAULTS)
    o = {**GENERATE_DEFAULTS, **options}
    m = pb.GenerateRequest()
    if (n := _int("max_new_tokens", o["max_new_tokens"], 1)) != 16:
        m.max_new_tokens = n
    t = _float("temperature", o["temperature"])
    if not (math.isfinite(t) and t >= 0):
        raise OptionError("temperature", f"{t} is not a finite number >= 0")
    m.temperature = t
    m.top_k = _int("top_k", o["top_k"], 0)
    p = _float("top_p", o["top_p"])
    if not 0 <= p <= 1:
        raise OptionError("top_p", f"{p} is not in [0, 1]")
    m.top_p = p
    m.seed = _int("seed", o["seed"], 0, UINT64_MAX)
    controls = o["controls"]
    if isinstance(controls, (str, bytes, Control)) or not isinstance(controls, Iterable):
        raise OptionError("controls", f"{controls!r} is not a list of controls")
    m.controls.extend(_control(i, c) for i, c in enumerate(controls))
    cm = _enum("control_mode", o["control_mode"], pb.ControlMode, "CONTROL_MODE_")
    if cm != pb.CONTROL_MODE_LOG_ADDITIVE:
        m.control_mode = cm
    ov = _enum("control_token_overlap", o["control_token_overlap"], pb.ControlTokenOverlap,
               "CONTROL_TOKEN_OVERLAP_")
    if ov != pb.CONTROL_TOKEN_OVERLAP_PARTIAL:
        m.control_token_overlap = ov
    m.layers.extend(_layers("layers", o["layers"]))
    if not _bool("add_special_tokens", o["add_special_tokens"]):
        m.add_special_tokens = False
    if not _bool("stop_at_eos", o["stop_at_eos"]):
        m.stop_at_eos = False
    return m


def request_id(value: Any) -> str:
    return _request_id(value)
