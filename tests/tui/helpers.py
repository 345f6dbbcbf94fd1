"""Small helpers for driving the wizard with Pilot."""

from __future__ import annotations

import asyncio
import time

from textual.pilot import Pilot
from textual.widgets import Input, Select

from tui.widgets.field import FieldRow, field_id


def editor(pilot: Pilot, key: str) -> Input | Select:
    return pilot.app.screen.query_one(f"#{field_id(key)}")  # type: ignore[return-value]


def row(pilot: Pilot, key: str) -> FieldRow:
    return pilot.app.screen.query_one(f"#row-{field_id(key)}", FieldRow)


async def go(pilot: Pilot, step: str) -> None:
    pilot.app.go(step)  # type: ignore[attr-defined]
    await pilot.pause()


async def type_into(pilot: Pilot, key: str, text: str) -> None:
    """Focus the field, clear it and type text key by key, as a user would."""
    widget = editor(pilot, key)
    assert isinstance(widget, Input)
    # A blinking cursor makes a snapshot depend on when it is taken (seen on a loaded machine):
    # keep it shown, as it is at the moment typing stops.
    widget.cursor_blink = False
    widget.focus()
    await pilot.pause()
    widget.value = ""
    await pilot.press(*text)
    await pilot.pause()


async def choose(pilot: Pilot, key: str, value: str) -> None:
    widget = editor(pilot, key)
    assert isinstance(widget, Select)
    widget.value = value
    await pilot.pause()


async def wait_for(pilot: Pilot, predicate, timeout: float = 20.0) -> None:
    """Let the app run until predicate() is true (workers and subprocesses included)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the wizard")
        await asyncio.sleep(0.05)
        await pilot.pause()
