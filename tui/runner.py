"""The trainer CLI as a subprocess: training followed through its progress JSON, data JSON.

Never imports the trainer. ``TrainerRun`` starts ``... train --progress-json FILE`` in its
own session (so the terminal's Ctrl+C is the wizard's, not the trainer's), yields the
JSON events as the file grows and the output lines as they come, and stops it with
SIGINT first (the trainer saves a checkpoint and emits "cancelled"), SIGTERM and
SIGKILL after grace periods. No Textual here: the Train screen drives it from workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

POLL_S = 0.1


class TrainerCommandError(Exception):
    """A trainer CLI call failed; the message is its last error line."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_json(argv: list[str], config_text: str, timeout: float = 300.0) -> Any:
    """Run ``argv + ["--config", <temp file>]`` and parse its stdout as JSON.

    The candidate config goes through a temp file, so the preview reflects unsaved
    edits and nothing is written to the user's config.yml.
    """
    with tempfile.TemporaryDirectory(prefix="headline-wizard-") as tmp:
        path = Path(tmp) / "config.yml"
        path.write_text(config_text, encoding="utf-8")
        try:
            proc = subprocess.run(
                [*argv, "--config", str(path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=_env(),
            )
        except subprocess.TimeoutExpired:
            raise TrainerCommandError(f"no answer after {timeout:.0f} s") from None
        except OSError as exc:
            raise TrainerCommandError(f"cannot start {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise TrainerCommandError(tail.replace(str(path), "<config>"))
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise TrainerCommandError("the trainer did not print JSON") from None


class TrainerRun:
    """One ``train`` subprocess and its progress file."""

    def __init__(self, argv: list[str], progress_file: str | os.PathLike):
        self.argv = argv
        self.progress_file = Path(progress_file)
        self.proc: subprocess.Popen[str] | None = None
        self.cancel_requested = False

    def start(self) -> None:
        self.progress_file.parent.mkdir(parents=True, exist_ok=True)
        self.progress_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=_env(),
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def output_lines(self) -> Iterator[str]:
        """stdout and stderr, line by line, until the process closes them."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            yield line.rstrip("\n")

    def events(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator[dict]:
        """Progress events as the file grows; ends once the process exited and all is read."""
        buffer = ""
        offset = 0
        while not cancelled():
            exited = not self.running
            chunk = ""
            if self.progress_file.exists():
                with self.progress_file.open("r", encoding="utf-8", errors="replace") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                    offset = fh.tell()
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.strip():
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(event, dict):
                        yield event
            if exited and not chunk:
                return
            if not chunk:
                time.sleep(POLL_S)

    def interrupt(self) -> None:
        """Ask the trainer to stop: SIGINT, on which it saves a checkpoint and exits 130."""
        self.cancel_requested = True
        self._signal(signal.SIGINT)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
