"""Headline Studio configuration: one typed, frozen object read from config.yml.

The YAML file is the single source of truth for the trainer, the wizard and the
service. ``ConfigDocument`` keeps the ruamel.yaml round-trip tree so that a
writer (the wizard, ``--set`` overrides saved to disk) changes only the values
it touches and keeps comments, blank lines, key order and quoting.

This package is a leaf: stdlib, pydantic and ruamel.yaml only.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from config.schema import PACKAGED_MODELS, Config

__all__ = [
    "Config",
    "ConfigDocument",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "PACKAGED_MODELS",
    "load_config",
    "parse_override",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "config.yml"


class ConfigError(Exception):
    """A config file or value is invalid. ``errors`` holds (key path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None):
        self.errors = errors
        self.source = source
        lines = [f"{path}: {msg}" if path else msg for path, msg in errors]
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(lines))


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    # Write None as `null` (ruamel's default is an empty value), as config.yml spells it.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def _to_plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_plain(v) for v in node]
    return node


def _validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    errors = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            # Cross-field validators name their own key path: "train.warmup_steps: ...".
            head, sep, rest = msg.partition(": ")
            if sep and "." in head and " " not in head:
                loc, msg = head, rest
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        errors.append((loc, msg))
    return errors


def validate(data: dict, source: str | None = None) -> Config:
    """Validate a plain dict against the schema; raise ConfigError naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", "the top level must be a mapping of sections")], source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_errors(exc), source) from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``a.b=c`` into (``"a.b"``, value), the value read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([("", f"override {text!r} must look like section.key=value")])
    try:
        value = YAML(typ="safe").load(raw) if raw.strip() else None
    except YAMLError as exc:
        raise ConfigError([(key, f"cannot parse value {raw!r}: {exc}")]) from None
    return key, value


class ConfigDocument:
    """A config.yml held as a ruamel round-trip tree: read, change values, validate, save."""

    def __init__(self, tree: CommentedMap, path: Path | None = None, text: str = ""):
        self.tree = tree
        self.path = path
        self.original_text = text

    # -- reading --------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, path: Path | None = None) -> ConfigDocument:
        source = str(path) if path else "<config>"
        try:
            tree = _yaml().load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
            raise ConfigError([("", f"invalid YAML at {where}: {exc.problem or exc}")], source) from None
        except YAMLError as exc:
            raise ConfigError([("", f"invalid YAML: {exc}")], source) from None
        if tree is None:
            tree = CommentedMap()
        if not isinstance(tree, CommentedMap):
            raise ConfigError([("", "the top level must be a mapping of sections")], source)
        return cls(tree, path, text)

    @classmethod
    def read(cls, path: str | os.PathLike = DEFAULT_CONFIG_PATH) -> ConfigDocument:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError([("", "file not found")], str(path)) from None
        except OSError as exc:
            raise ConfigError([("", f"cannot read: {exc.strerror}")], str(path)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ConfigError([("", f"line {line}: not valid UTF-8")], str(path)) from None
        return cls.from_text(text, path)

    # -- values ---------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        node: Any = self.tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return _to_plain(node)

    def set(self, key: str, value: Any) -> None:
        """Set ``a.b.c`` to value, creating missing sections; keeps the node's style."""
        parts = key.split(".")
        node = self.tree
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    path = ".".join(parts[: i + 1])
                    raise ConfigError([(path, "is a value, not a section")])
                child = CommentedMap()
                node[part] = child
            node = child
        leaf = parts[-1]
        old = node.get(leaf)
        if _to_plain(old) == value and type(_to_plain(old)) is type(value):
            return  # unchanged: keep the original token (quoting, number format)
        if isinstance(value, list):
            seq = CommentedSeq(value)
            if isinstance(old, CommentedSeq):
                seq.fa._flow_style = old.fa.flow_style()
            else:
                seq.fa.set_flow_style()
            value = seq
        elif isinstance(value, dict):
            value = CommentedMap(value)
        elif isinstance(value, str) and old is not None and hasattr(old, "style"):
            value = type(old)(value)  # keep the quoting style of the old string
        appending = leaf not in node and len(node) > 0
        if appending:
            before = _tail(node)
        node[leaf] = value
        if appending:
            # The blank lines / comments that closed the section now follow the new key.
            _move_trailer(before, _tail(node))

    def delete(self, key: str) -> None:
        parts = key.split(".")
        node: Any = self.tree
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            last = list(node.keys())[-1] == parts[-1]
            removed = _tail(node)
            del node[parts[-1]]
            if last and len(node) > 0:
                _move_trailer(removed, _tail(node))

    def comment(self, key: str) -> str:
        """The comment block just above ``key`` (and any on its line), '' if none.

        ruamel stores a comment line on the key *before* it (or, for a section's
        first key, on the section), so the block above a key is the tail of its
        predecessor's token after that token's own end-of-line part.
        """
        parts = key.split(".")
        node: Any = self.tree
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, CommentedMap) or parts[-1] not in node:
            return ""
        leaf = parts[-1]
        keys = list(node.keys())
        index = keys.index(leaf)
        above = ""
        own_pre = (node.ca.items.get(leaf) or [None, None])[1]
        if own_pre:  # after a flow sequence ruamel keeps the block on the key itself
            above = "".join(t.value for t in own_pre)
        elif index == 0:
            above = "".join(t.value for t in (node.ca.comment or [None, []])[1] or [])
        else:
            # After a nested section the block sits on that section's deepest last key.
            prev_node, prev_key = node, keys[index - 1]
            while isinstance(prev_node[prev_key], CommentedMap) and prev_node[prev_key]:
                prev_node = prev_node[prev_key]
                prev_key = list(prev_node.keys())[-1]
            token = (prev_node.ca.items.get(prev_key) or [None] * 3)[2]
            if token is not None:
                _, _, above = token.value.partition("\n")
        # Only the block touching the key: stop at the last blank line.
        block = above.rstrip("\n").split("\n\n")[-1] if above.strip() else ""
        lines = [ln.strip().lstrip("#").strip() for ln in block.splitlines() if ln.strip()]
        own = (node.ca.items.get(leaf) or [None] * 3)[2]
        if own is not None and own.value.lstrip(" ").startswith("#"):
            lines.append(own.value.split("\n", 1)[0].strip().lstrip("#").strip())
        return " ".join(line for line in lines if line)

    def plain(self) -> dict:
        return _to_plain(self.tree)

    def validate(self) -> Config:
        return validate(self.plain(), str(self.path) if self.path else None)

    # -- writing --------------------------------------------------------------
    def dump(self) -> str:
        buf = io.StringIO()
        _yaml().dump(self.tree, buf)
        return buf.getvalue()

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Validate, then write atomically (temp file in the same folder + rename)."""
        self.validate()
        target = Path(path or self.path or DEFAULT_CONFIG_PATH)
        text = self.dump()
        atomic_write(target, text)
        self.path = target
        self.original_text = text
        return target


def _tail(node: CommentedMap) -> tuple[CommentedMap, Any]:
    """The deepest last key of a section: where ruamel keeps the text that closes it."""
    key = list(node.keys())[-1]
    while isinstance(node[key], CommentedMap) and len(node[key]) > 0:
        node = node[key]
        key = list(node.keys())[-1]
    return node, key


def _move_trailer(src: tuple[CommentedMap, Any], dst: tuple[CommentedMap, Any]) -> None:
    """Move the lines after ``src``'s own line (blank lines, comments) to after ``dst``."""
    src_map, src_key = src
    dst_map, dst_key = dst
    if src_map is dst_map and src_key == dst_key:
        return
    item = src_map.ca.items.get(src_key)
    token = item[2] if item and len(item) > 2 else None
    if token is None or "\n" not in token.value:
        return
    own_line, rest = token.value.split("\n", 1)
    if not rest:
        return
    moved = copy.copy(token)
    moved.value = "\n" + rest
    if own_line.strip():
        token.value = own_line + "\n"
    else:
        item[2] = None
    dst_item = dst_map.ca.items.setdefault(dst_key, [None, None, None, None])
    dst_item[2] = moved


def atomic_write(target: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_config(
    path: str | os.PathLike | None = None, overrides: Iterable[str] = ()
) -> Config:
    """Read and validate config.yml, applying ``a.b=c`` overrides first."""
    doc = ConfigDocument.read(path or DEFAULT_CONFIG_PATH)
    for text in overrides:
        key, value = parse_override(text)
        _check_known(key)
        doc.set(key, value)
    return doc.validate()


def _check_known(key: str) -> None:
    model: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            raise ConfigError([(".".join(parts[: i + 1]), "unknown key")])
        annotation = fields[part].annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        model = inner[0] if inner and hasattr(inner[0], "model_fields") else annotation


def resolve_path(path: str | os.PathLike) -> Path:
    """A path from config.yml: absolute as is, else relative to the working directory."""
    return Path(path).expanduser().absolute()
