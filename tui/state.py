"""The wizard's model: the document being edited, each field's text and value, the errors.

No Textual here. Screens read and write a ``WizardState``; it builds the candidate
config with ``ConfigDocument.set`` on a copy of the original tree, validates it with
the trainer's own schema and maps each ``ConfigError`` key path to the fields it
names. Saving goes through ``ConfigDocument.save`` (round-trip, atomic).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import DEFAULT_CONFIG_PATH, PACKAGED_MODELS, Config, ConfigDocument, ConfigError
from tui.fields import FieldSpec, ParseError, format_value, parse_text, section_keys, spec_for

SECTIONS = ("model", "data", "prompt", "train", "eval", "generation")
LORA_PREFIX = "model.lora."
MODEL_KINDS = (*PACKAGED_MODELS, "hf", "local")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A cross-field rule's message already names the values; drop the echo of the whole section.
_SECTION_ECHO = re.compile(r" \(got \{.*\}\)$", re.DOTALL)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass
class Entry:
    spec: FieldSpec
    text: str
    value: Any  # parsed value; the raw text when it does not parse (the schema then names it)
    initial: Any  # value in the document, or MISSING (then the schema default is shown)


def guess_model_kind(name: str) -> str:
    if name in PACKAGED_MODELS:
        return name
    if name.startswith(("/", ".", "~")) or Path(name).expanduser().is_dir():
        return "local"
    return "hf"


def display_path(path: str | os.PathLike) -> str:
    """A path relative to the working directory when it lies under it (stable on screen)."""
    p = Path(path)
    try:
        return str(p.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def defaults_document(path: Path | None = None) -> ConfigDocument:
    """A document holding ``Config()`` defaults (used when the file is broken or absent)."""
    plain = Config().model_dump(mode="json")
    for section in ("model",):
        if plain[section].get("lora") is None:
            plain[section].pop("lora", None)
    doc = ConfigDocument.from_text("{}\n", path)
    for section, values in plain.items():
        _set_tree(doc, section, values)
    text = doc.dump()
    return ConfigDocument.from_text(text, path)


def _set_tree(doc: ConfigDocument, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for name, inner in value.items():
            _set_tree(doc, f"{key}.{name}", inner)
    else:
        doc.set(key, value)


def _packaged_help() -> ConfigDocument | None:
    try:
        return ConfigDocument.read(DEFAULT_CONFIG_PATH)
    except ConfigError:
        return None


class WizardState:
    """Everything the wizard edits, and the rules for turning it into a config.yml."""

    def __init__(
        self,
        doc: ConfigDocument,
        path: str | os.PathLike,
        *,
        before_text: str | None = None,
        from_defaults: bool = False,
    ):
        self.path = Path(path)
        self.from_defaults = from_defaults
        self.before_text = doc.original_text if before_text is None else before_text
        self._help_doc = _packaged_help()
        self._load(doc)

    def _load(self, doc: ConfigDocument) -> None:
        self.doc = doc
        self.entries: dict[str, Entry] = {}
        for section in SECTIONS:
            for key in section_keys(section):
                spec = spec_for(key)
                initial = doc.get(key, MISSING)
                shown = spec.default if initial is MISSING else initial
                self.entries[key] = Entry(spec, format_value(spec, shown), shown, initial)
        self.model_kind = guess_model_kind(str(self.value("model.name")))
        self.errors: dict[str, str] = {}
        self.general_errors: list[str] = []
        self.revalidate()

    # -- fields -------------------------------------------------------------------------
    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.entries if k.startswith(prefix)]

    def spec(self, key: str) -> FieldSpec:
        return self.entries[key].spec

    def text(self, key: str) -> str:
        return self.entries[key].text

    def value(self, key: str) -> Any:
        return self.entries[key].value

    def help(self, key: str) -> str:
        for doc in (self.doc, self._help_doc):
            text = doc.comment(key) if doc is not None else ""
            if text:
                return text
        return self.spec(key).description

    def set_text(self, key: str, text: str) -> None:
        entry = self.entries[key]
        if text == entry.text:
            return
        entry.text = text
        try:
            entry.value = parse_text(entry.spec, text)
        except ParseError as exc:
            entry.value = exc.raw
        self.revalidate()

    def set_model_kind(self, kind: str) -> None:
        self.model_kind = kind
        if kind in PACKAGED_MODELS:
            self.set_text("model.name", kind)
        self.revalidate()

    @property
    def lora(self) -> bool:
        return self.value("model.method") == "lora"

    def relevant(self, key: str) -> bool:
        return self.lora or not key.startswith(LORA_PREFIX)

    # -- candidate ----------------------------------------------------------------------
    def changes(self) -> dict[str, Any]:
        """Keys whose value differs from the document (lora keys are all written with lora)."""
        out = {}
        for key, entry in self.entries.items():
            if not self.relevant(key):
                continue
            if entry.initial is MISSING:
                if key.startswith(LORA_PREFIX) or entry.value != entry.spec.default:
                    out[key] = entry.value
            elif entry.value != entry.initial:
                out[key] = entry.value
        return out

    def candidate(self) -> ConfigDocument:
        doc = ConfigDocument(copy.deepcopy(self.doc.tree), self.path, self.doc.original_text)
        for key, value in self.changes().items():
            doc.set(key, value)
        if not self.lora:
            doc.delete("model.lora")
        return doc

    @property
    def dirty(self) -> bool:
        removes_lora = not self.lora and self.doc.get("model.lora") is not None
        return self.from_defaults or bool(self.changes()) or removes_lora

    def revalidate(self) -> None:
        self.errors, self.general_errors = {}, []
        try:
            self.candidate().validate()
        except ConfigError as exc:
            for loc, message in exc.errors:
                message = _SECTION_ECHO.sub("", message)
                owners = self._owners(loc)
                for key in owners:
                    self.errors.setdefault(key, message)
                if not owners:
                    self.general_errors.append(f"{loc}: {message}" if loc else message)
        name_error = self._check_model_name()
        if name_error and "model.name" not in self.errors:
            self.errors["model.name"] = name_error

    def _owners(self, loc: str) -> list[str]:
        if loc in self.entries:
            return [loc]
        for key in self.entries:
            if loc.startswith(key + "."):  # an item of a list field: prompt.tasks.1
                return [key]
        if "." in loc:  # a section-level rule: data.split -> its fields
            return [k for k in self.entries if k.startswith(loc + ".") and self.relevant(k)]
        return []

    def _check_model_name(self) -> str | None:
        name = str(self.value("model.name"))
        if self.model_kind == "local":
            folder = Path(name).expanduser()
            if not folder.is_dir():
                return f"no such folder: {name}"
            if not (folder / "config.json").is_file():
                return f"not a model folder (no config.json in {name})"
        elif self.model_kind == "hf" and name and not _HF_ID.match(name):
            return f"not a Hugging Face id such as 'gpt2' or 'owner/name' (got {name!r})"
        return None

    def error(self, key: str) -> str | None:
        return self.errors.get(key) if self.relevant(key) else None

    def invalid_keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.errors if k.startswith(prefix) and self.relevant(k)]

    @property
    def valid(self) -> bool:
        return not self.invalid_keys() and not self.general_errors

    # -- output -------------------------------------------------------------------------
    def candidate_text(self) -> str:
        return self.candidate().dump()

    def diff(self) -> str:
        after = self.candidate_text()
        lines = difflib.unified_diff(
            self.before_text.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{display_path(self.path)} (on disk)",
            tofile=f"{display_path(self.path)} (after save)",
        )
        return "".join(lines)

    def save(self) -> Path:
        """Write config.yml (refused while invalid); then the saved file is the new baseline."""
        if not self.valid:
            raise ConfigError([(k, self.errors[k]) for k in self.invalid_keys()] or [("", "invalid")])
        doc = self.candidate()
        if not self.from_defaults and not self.dirty:
            text = self.doc.original_text  # nothing changed: the file stays byte for byte
            if self.path.exists() and self.path.read_text(encoding="utf-8") == text:
                return self.path
        doc.save(self.path)
        saved = ConfigDocument.from_text(doc.original_text, self.path)
        self.before_text = saved.original_text
        self.from_defaults = False
        kind = self.model_kind
        self._load(saved)
        self.model_kind = kind
        self.revalidate()
        return self.path

    def train_command(
        self, trainer_cmd: list[str], progress_file: str | os.PathLike, resume: str | None = None
    ) -> list[str]:
        argv = [*trainer_cmd, "train", "--config", str(self.path), "--progress-json", str(progress_file)]
        if resume:
            argv += ["--resume", resume]
        return argv

    def progress_file(self) -> Path:
        """Where the trainer writes its JSON progress: beside the runs it describes."""
        return Path(str(self.value("train.output_dir"))) / ".wizard-progress.jsonl"


def shown_command(argv: list[str]) -> str:
    """The command as a shell line, paths under the working directory made relative."""
    parts = []
    for arg in argv:
        parts.append(display_path(arg) if os.path.isabs(arg) else arg)
    return shlex.join(parts)
