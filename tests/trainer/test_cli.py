"""The ``headline`` CLI: exit codes, overrides, generate / eval / data on a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    import os

    from tests.trainer.test_train import tiny_cfg
    from trainer.train import train

    os.chdir(REPO)
    out = tmp_path_factory.mktemp("cli-runs")
    cfg = tiny_cfg(tiny_model_dir, out, "train.max_steps=4", "train.eval_steps=2", "train.save_steps=2")
    return train(cfg, evaluate_after=False, show_bar=False)


def test_cli_imports_without_torch_and_runs_as_a_module():
    code = "import sys, trainer.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    help_ = subprocess.run([sys.executable, "-m", "trainer.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0
    for command in ("train", "eval", "generate", "data", "wizard"):
        assert command in help_.stdout


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.learning_rate=fast", "train.learning_rate"), ("train.nope=1", "train.nope"),
     ("train.warmup_steps=50", "train.warmup_steps")],
)
def test_bad_override_names_the_key_and_exits_2(override, key, capsys):
    args = ["train", "--set", override] + (["--set", "train.max_steps=10"] if "warmup" in override else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    assert main(["generate"]) == 2  # needs --theme or --article
    assert main(["generate", "--theme", "x", "--article", "f.txt"]) == 2
    assert main(["no-such-command"]) == 2


def test_resume_without_a_run_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--resume", "--set", f"train.output_dir={tmp_path}"]) == 3
    assert "no unfinished run" in capsys.readouterr().err


def test_data_preview_and_report_json(capsys):
    assert main(["data", "preview", "--rows", "3", "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert {"title", "text"} <= set(preview["columns"]) and len(preview["rows"]) == 3
    assert main(["data", "report", "--json", "--set", "data.max_examples=30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_kept"] == 30 and sum(report["splits"].values()) == 30
    assert main(["data", "preview", "--json", "--set", "data.source=missing.jsonl"]) == 3


def test_dry_run_prints_examples_without_training(tiny_model_dir, tmp_path, capsys):
    assert main(["train", "--dry-run", "--set", f"model.name={tiny_model_dir}",
                 "--set", f"train.output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "Headline:" in out
    assert not any(tmp_path.iterdir())  # no run folder


def test_generate_prints_headlines_for_a_run(tiny_run, tiny_model_dir, tmp_path, capsys):
    sets = ["--set", f"model.name={tiny_model_dir}", "--max-new-tokens", "6"]
    assert main(["generate", "--theme", "oil price", "--category", "business", "--n", "2",
                 "--run", str(tiny_run), *sets]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2
    article = tmp_path / "article.txt"
    article.write_text("The company said profits doubled after a strong year for oil sales.")
    assert main(["generate", "--article", str(article), "--run", str(tiny_run), "--greedy", "--seed", "1", *sets]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    # A bad decoding value is a config error that names the key.
    assert main(["generate", "--theme", "x", "--run", str(tiny_run), "--top-p", "2", *sets]) == 2
    assert "generation.top_p" in capsys.readouterr().err


def test_generate_several_themes_beside_the_base_model(tiny_run, tiny_model_dir, capsys):
    assert main(["generate", "--theme", "oil price", "--theme", "cup final", "--compare-base",
                 "--run", str(tiny_run), "--max-new-tokens", "4",
                 "--set", f"model.name={tiny_model_dir}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith("  ")] == ["oil price:", "cup final:"]
    assert sum(line.startswith("  fine-tuned: ") for line in lines) == 2
    assert sum(line.startswith("  base:       ") for line in lines) == 2


def test_generate_falls_back_to_the_base_model_with_a_note(tiny_model_dir, tmp_path, capsys):
    assert main(["generate", "--theme", "oil price", "--max-new-tokens", "4",
                 "--set", f"model.name={tiny_model_dir}", "--set", f"train.output_dir={tmp_path}",
                 "--set", f"service.model={tmp_path}/latest"]) == 0
    captured = capsys.readouterr()
    assert "using the base model" in captured.err and len(captured.out.splitlines()) == 1


def test_eval_command_writes_the_report(tiny_run, tiny_model_dir, capsys):
    assert main(["eval", str(tiny_run), "--set", "eval.max_examples=2", "--set", "generation.max_new_tokens=4"]) == 0
    out = capsys.readouterr().out
    assert "ROUGE-L" in out and (tiny_run / "eval.json").is_file() and (tiny_run / "eval.md").is_file()
    assert main(["eval", str(tiny_run.parent / "nope")]) == 3
