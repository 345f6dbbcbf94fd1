"""Run folders: create them, record their status, find them again.

A run lives in ``<train.output_dir>/<YYYYmmdd-HHMMSS>-<run_name>/`` (layout in
docs/CONTRACTS.md). ``run.json`` says what state it is in; ``config.yml`` is the
resolved config it used (readable by ``config.load_config``, so a resume or an
evaluation sees exactly the same settings); ``<output_dir>/latest`` is a symlink
to the newest *finished* run, swapped atomically so a reader (the service) never
sees it missing.

No torch here: the CLI and the service resolve runs without loading a model.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from config import Config, atomic_write, resolve_path
from trainer.errors import TrainerError

RUN_JSON = "run.json"
CONFIG_YML = "config.yml"
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
METRICS = "metrics.jsonl"
LATEST = "latest"
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _write(path: Path, text: str) -> None:
    """Atomic write (temp file + rename), world-readable like any other run file."""
    atomic_write(path, text)
    os.chmod(path, 0o644)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- creating and updating ----------------------------------------------------------------


def config_yaml(cfg: Config) -> str:
    """The resolved config as block-style YAML that ``config.load_config`` reads back equal."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(cfg.model_dump(mode="json"), buf)
    return "# Resolved config of this run (written by headline train).\n" + buf.getvalue()


def create_run(cfg: Config, *, base_model: str | None = None) -> Path:
    """Make a new run folder with run.json (status running) and config.yml; return it."""
    root = resolve_path(cfg.train.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{cfg.train.run_name}"
    n = 1
    while True:
        try:
            (root / run_id).mkdir()
            break
        except FileExistsError:  # two runs in the same second
            n += 1
            run_id = f"{stamp}-{cfg.train.run_name}-{n}"
    run_dir = root / run_id
    _write(run_dir / CONFIG_YML, config_yaml(cfg))
    write_run_json(
        run_dir,
        run_id=run_id,
        name=cfg.train.run_name,
        status="running",
        version=None,
        base_model=base_model or cfg.model.name,
        created=_now(),
        finished=None,
        host=socket.gethostname(),
    )
    return run_dir


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainerError(f"{run_dir}: not a run folder (no {RUN_JSON})") from None
    except json.JSONDecodeError as exc:
        raise TrainerError(f"{path}: unreadable ({exc})") from None


def write_run_json(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into run.json (atomically) and return the new content."""
    path = Path(run_dir) / RUN_JSON
    data: dict[str, Any] = {}
    if path.exists():
        data = read_run(run_dir)
    data.update(fields)
    _write(path, json.dumps(data, indent=2) + "\n")
    return data


def set_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> dict[str, Any]:
    if status in ("finished", "cancelled", "failed"):
        fields.setdefault("finished", _now())
    return write_run_json(run_dir, status=status, **fields)


def update_latest(run_dir: str | os.PathLike) -> Path:
    """Point ``<output_dir>/latest`` at run_dir: a relative symlink, swapped atomically."""
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)
    return link


# -- finding ------------------------------------------------------------------------------


def resolve_run(ref: str | os.PathLike, output_dir: str | os.PathLike = "runs") -> Path:
    """A run folder from: its path, "latest" / "runs/latest", or a run id under output_dir."""
    text = str(ref)
    root = resolve_path(output_dir)
    candidates = [resolve_path(text)]
    if text == LATEST:
        candidates = [root / LATEST]
    elif not Path(text).is_absolute():
        candidates.append(root / text)
    for path in candidates:
        if (path / RUN_JSON).is_file():
            return path.resolve()
    if text in (LATEST, str(Path(output_dir) / LATEST)) or text.endswith("/" + LATEST):
        raise TrainerError(f"{text}: no finished run yet (train one with `headline train`)")
    raise TrainerError(f"{text}: no such run (a run folder, 'runs/latest', or a run id in {root})")


def list_runs(output_dir: str | os.PathLike = "runs") -> list[Path]:
    """Run folders under output_dir, oldest first (ids start with a timestamp)."""
    root = resolve_path(output_dir)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / RUN_JSON).is_file()
    )


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-step complete checkpoint (one whose trainer_state.json was written)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        m = _CHECKPOINT.match(path.name)
        if m and (path / "trainer_state.json").is_file():
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def find_resumable(
    output_dir: str | os.PathLike = "runs", ref: str | bool | None = None
) -> tuple[Path, Path]:
    """(run folder, checkpoint) to resume: ``ref`` names the run, else the newest unfinished one."""
    if isinstance(ref, str) and ref:
        run_dir = resolve_run(ref, output_dir)
        status = read_run(run_dir).get("status")
        if status == "finished":
            raise TrainerError(f"{run_dir.name}: already finished, nothing to resume")
        checkpoint = last_checkpoint(run_dir)
        if checkpoint is None:
            raise TrainerError(f"{run_dir.name}: no checkpoint to resume from")
        return run_dir, checkpoint
    for run_dir in reversed(list_runs(output_dir)):
        if read_run(run_dir).get("status") == "finished":
            continue
        checkpoint = last_checkpoint(run_dir)
        if checkpoint is not None:
            return run_dir, checkpoint
    raise TrainerError(f"no unfinished run with a checkpoint in {resolve_path(output_dir)}")


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.match(text))
