"""Bad input to the trainer: corrupt YAML, broken data rows, a missing model, a full disk.

Each gives a clear error (the key, line or path named; the CLI's exit code) and loses nothing
saved before: the config file, earlier checkpoints, earlier runs and runs/latest.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from config import ConfigDocument, ConfigError, load_config
from trainer import runs
from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample_news.jsonl"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # data.source and cache paths are relative to the repository


def tiny_overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model_dir}", f"data.source={SAMPLE}", "data.max_examples=20",
        f"train.output_dir={out}", "train.batch_size=8", "train.learning_rate=3e-3",
        "train.warmup_steps=1", "train.max_steps=8", "train.eval_steps=4", "train.save_steps=4",
        "train.logging_steps=2", "train.num_threads=1", "train.save_total_limit=3",
        "train.early_stopping_patience=null", "eval.max_examples=2", "generation.max_new_tokens=4",
        *extra,
    ]


# -- corrupt YAML ---------------------------------------------------------------------------

CORRUPT = """\
model:
  name: smollm2-135m-instruct
train:
  epochs: 3
  batch_size: [8
  learning_rate: 5.0e-5
"""


def test_corrupt_yaml_names_the_line_and_leaves_the_file(tmp_path, capsys):
    path = tmp_path / "config.yml"
    path.write_text(CORRUPT)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 6" in str(info.value) or "line 5" in str(info.value), str(info.value)
    assert str(path) in str(info.value)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "line" in err and "Traceback" not in err
    assert path.read_text() == CORRUPT


def test_wrong_value_names_the_key_and_save_does_not_touch_the_file(tmp_path):
    path = tmp_path / "config.yml"
    original = (REPO / "config" / "config.yml").read_text()
    path.write_text(original)
    doc = ConfigDocument.read(path)
    doc.set("train.batch_size", -3)
    with pytest.raises(ConfigError, match="train.batch_size"):
        doc.save()
    assert path.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["config.yml"]   # no temp file left behind


def test_invalid_utf8_config_names_the_line(tmp_path):
    path = tmp_path / "config.yml"
    path.write_bytes(b"model:\n  name: gpt2\ntrain:\n  run_name: caf\xe9\n")
    with pytest.raises(ConfigError, match="line 4"):
        load_config(path)


# -- a dataset with broken rows -------------------------------------------------------------

def test_broken_rows_are_counted_not_silently_dropped(tmp_path, capsys):
    from trainer.data import load_articles

    good = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:12]]
    lines = [json.dumps(r) for r in good]
    lines.insert(3, '{"title": "broken json row", "text": ')                 # malformed JSON
    lines.insert(5, json.dumps({"text": "x" * 100, "category": "business"}))   # no title
    lines.insert(7, json.dumps({"title": 12345, "text": "y" * 100}))           # wrong type
    lines.insert(9, "[1, 2, 3]")                                                 # not an object
    lines.append(json.dumps({"title": "Short", "text": "z" * 100}))            # too short
    raw = ("\n".join(lines) + "\n").encode()
    raw += b'{"title": "Bad bytes \xff\xfe in the title here", "text": "' + b"w" * 100 + b'"}\n'
    source = tmp_path / "broken.jsonl"
    source.write_bytes(raw)

    cfg = load_config(None, [f"data.source={source}"])
    articles, report = load_articles(cfg.data)
    assert report.rows_read == 18
    assert report.rows_kept == len(articles) == 13
    assert report.rows_kept + sum(report.dropped.values()) == report.rows_read   # every row accounted for
    assert report.dropped.get("malformed_json") == 2
    assert report.repaired.get("rows_with_undecodable_bytes") == 1
    assert {e["where"] for e in report.dropped_examples} >= {"line 4", "line 6"}

    assert main(["data", "report", "--set", f"data.source={source}", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows_read"] == 18 and sum(printed["dropped"].values()) == 5


def test_missing_data_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["data", "report", "--set", f"data.source={missing}"]) == 3
    err = capsys.readouterr().err
    assert str(missing) in err or "data.source" in err
    assert "Traceback" not in err


# -- a missing model path -------------------------------------------------------------------

def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    out = tmp_path / "runs"
    code = main(["train", "--set", f"model.name={missing}", "--set", f"train.output_dir={out}", "--no-eval"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "model.name" in err and str(missing) in err and "Traceback" not in err
    assert not (out / runs.LATEST).exists()                       # no half run became latest
    for run_dir in runs.list_runs(out):
        assert runs.read_run(run_dir)["status"] == "failed"
    assert main(["generate", "--run", str(missing), "--theme", "oil"]) == 3
    assert str(missing) in capsys.readouterr().err


# -- a full disk during checkpoint save -------------------------------------------------------

def _fake_previous_run(out: Path) -> tuple[Path, dict[str, bytes]]:
    """A finished run and runs/latest pointing at it, as a real earlier `headline train` leaves."""
    prev = out / "20200101-000000-previous"
    (prev / runs.MODEL_DIR).mkdir(parents=True)
    (prev / runs.MODEL_DIR / "model.safetensors").write_bytes(b"weights of the earlier run")
    (prev / runs.RUN_JSON).write_text(json.dumps({"run_id": prev.name, "status": "finished", "version": "abc"}))
    runs.update_latest(prev)
    return prev, {p.name: p.read_bytes() for p in prev.rglob("*") if p.is_file()}


@pytest.mark.timeout(240)
def test_disk_full_during_checkpoint_save_loses_nothing(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    from trainer.train import train

    out = tmp_path / "runs"
    prev, prev_files = _fake_previous_run(out)
    cfg = load_config(None, tiny_overrides(tiny_model_dir, out))

    real_save = torch.save

    def save_until_disk_full(obj, f, *args, **kwargs):
        # The second checkpoint's optimizer state hits a full disk after writing a few bytes.
        if isinstance(f, (str, os.PathLike)) and "checkpoint-8" in str(f):
            Path(f).write_bytes(b"\x80\x02partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(OSError) as info:
        train(cfg, evaluate_after=False, show_bar=False)
    assert info.value.errno == errno.ENOSPC and "No space left" in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)

    [run_dir] = [p for p in runs.list_runs(out) if p != prev]
    meta = runs.read_run(run_dir)
    assert meta["status"] == "failed" and "No space left" in meta.get("error", "")
    # The checkpoint before the failure is complete and is what a resume picks; the partial one is not.
    ckpt4 = run_dir / runs.CHECKPOINTS / "checkpoint-4"
    assert (ckpt4 / "trainer_state.json").is_file() and (ckpt4 / "optimizer.pt").stat().st_size > 100
    assert runs.last_checkpoint(run_dir) == ckpt4
    # The earlier run and runs/latest are untouched.
    assert (out / runs.LATEST).resolve() == prev.resolve()
    assert {p.name: p.read_bytes() for p in prev.rglob("*") if p.is_file()} == prev_files

    # Space is back: the run resumes from checkpoint-4 and finishes.
    finished = train(cfg, resume=True, evaluate_after=False, show_bar=False)
    assert finished == run_dir
    assert runs.read_run(run_dir)["status"] == "finished"
    assert (out / runs.LATEST).resolve() == run_dir.resolve()
    state = json.loads((runs.last_checkpoint(run_dir) / "trainer_state.json").read_text())
    assert state["global_step"] == 8
