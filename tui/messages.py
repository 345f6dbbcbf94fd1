"""Messages the wizard's widgets and workers post (attributes down, messages up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class FieldEdited(Message):
    """A field's text changed (typed, picked or set)."""

    key: str
    text: str


@dataclass
class StepRequested(Message):
    """Go to a step by name (a click on the step indicator)."""

    step: str


@dataclass
class DataLoaded(Message):
    """A data preview or report came back from the trainer CLI (or failed)."""

    kind: str  # "preview" | "report"
    data: Any
    error: str | None = None


@dataclass
class TrainerEvent(Message):
    """One progress JSON event from the running trainer."""

    event: dict


@dataclass
class TrainerOutput(Message):
    """One line of the trainer's stdout/stderr."""

    line: str


@dataclass
class TrainerExited(Message):
    returncode: int | None
