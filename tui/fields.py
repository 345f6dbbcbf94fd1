"""What the wizard knows about each config key, read from the pydantic schema.

A ``FieldSpec`` says how a key's value is typed in (int, float, bool, str, a list
or a choice among Literal values), whether ``null`` is allowed, and the valid range
as the schema states it (``ge``/``gt``/``le``/``lt``/length/pattern). The wizard
never repeats a rule: it parses text into the field's type and lets the schema judge.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from config.schema import Config

NULL_WORDS = ("", "null", "none", "~")


@dataclass(frozen=True)
class FieldSpec:
    key: str  # dotted path, e.g. "train.batch_size"
    kind: str  # "int" | "float" | "bool" | "str" | "choice" | "list"
    optional: bool
    choices: tuple[str, ...]  # Literal values (kind "choice", or the items of kind "list")
    range_text: str
    description: str
    default: Any

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _range_text(metadata: list[Any], kind: str) -> str:
    low = high = ""
    parts = []
    for item in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">")):
            if getattr(item, attr, None) is not None:
                low = f"{sign} {getattr(item, attr)}"
        for attr, sign in (("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                high = f"{sign} {getattr(item, attr)}"
        if getattr(item, "min_length", None) is not None and kind in ("list", "str"):
            what = "item" if kind == "list" else "character"
            n = item.min_length
            parts.append(f"at least {n} {what}{'s' if n != 1 else ''}")
        if getattr(item, "pattern", None):
            parts.append(f"matches {item.pattern}")
    if low and high:
        parts.insert(0, f"{low.split()[1]} {low.split()[0].replace('≥', '≤').replace('>', '<')} x {high}")
    elif low:
        parts.insert(0, f"x {low}")
    elif high:
        parts.insert(0, f"x {high}")
    return ", ".join(parts)


def _model_at(path: list[str]) -> Any:
    model: Any = Config
    for part in path:
        annotation, _ = _unwrap_optional(model.model_fields[part].annotation)
        model = annotation
    return model


def spec_for(key: str) -> FieldSpec:
    """The FieldSpec of a dotted config key (a leaf of the schema)."""
    parts = key.split(".")
    model = _model_at(parts[:-1])
    info = model.model_fields[parts[-1]]
    annotation, optional = _unwrap_optional(info.annotation)
    choices: tuple[str, ...] = ()
    origin = typing.get_origin(annotation)
    if origin is Literal:
        kind, choices = "choice", tuple(typing.get_args(annotation))
    elif origin is list:
        kind = "list"
        (item,) = typing.get_args(annotation)
        if typing.get_origin(item) is Literal:
            choices = tuple(typing.get_args(item))
    elif annotation is bool:
        kind, choices = "bool", ("true", "false")
    elif annotation in (int, float, str):
        kind = annotation.__name__
    else:
        raise TypeError(f"{key}: unsupported field type {annotation!r}")
    range_text = _range_text(list(info.metadata), kind)
    if choices and kind == "list":
        range_text = ", ".join(filter(None, [range_text, "of " + " | ".join(choices)]))
    if optional:
        range_text = ", ".join(filter(None, [range_text, "or null"]))
    default = info.get_default(call_default_factory=True)
    return FieldSpec(key, kind, optional, choices, range_text, info.description or "", default)


def section_keys(section: str) -> list[str]:
    """Leaf keys of a section in schema order; nested sections are walked (data.columns.*)."""
    model = _model_at(section.split("."))
    keys = []
    for name, info in model.model_fields.items():
        annotation, _ = _unwrap_optional(info.annotation)
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys.extend(section_keys(f"{section}.{name}"))
        else:
            keys.append(f"{section}.{name}")
    return keys


# -- text <-> value ---------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def format_value(spec: FieldSpec, value: Any) -> str:
    """How a value is shown in its input (the inverse of parse_text)."""
    if value is None:
        return "null"
    if spec.kind == "bool":
        return "true" if value else "false"
    if spec.kind == "list":
        return ", ".join(str(v) for v in value)
    if spec.kind == "str":
        return _escape(str(value))
    if spec.kind == "float" and isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


class ParseError(ValueError):
    """Text that is not of the field's type; ``raw`` goes to the schema for its message."""

    def __init__(self, raw: Any):
        super().__init__(raw)
        self.raw = raw


def parse_text(spec: FieldSpec, text: str) -> Any:
    """Text typed into a field -> a value of the field's type, or ParseError."""
    stripped = text.strip()
    if spec.optional and stripped.lower() in NULL_WORDS:
        return None
    if spec.kind == "int":
        try:
            return int(stripped.replace("_", ""))
        except ValueError:
            raise ParseError(stripped) from None
    if spec.kind == "float":
        try:
            return float(stripped)
        except ValueError:
            raise ParseError(stripped) from None
    if spec.kind == "bool":
        lowered = stripped.lower()
        if lowered in ("true", "yes", "on"):
            return True
        if lowered in ("false", "no", "off"):
            return False
        raise ParseError(stripped)
    if spec.kind == "list":
        inner = stripped[1:-1] if stripped.startswith("[") and stripped.endswith("]") else stripped
        return [item.strip().strip("'\"") for item in inner.split(",") if item.strip()]
    if spec.kind == "choice":
        return stripped
    return _unescape(text)
