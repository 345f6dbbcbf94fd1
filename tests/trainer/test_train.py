"""Real training runs on the tiny random GPT-2 (tests/tiny.py): a few steps each, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from config import load_config
from trainer import runs
from trainer.train import LengthGroupedSampler, PadToLongest, read_metrics, train

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(model_dir: Path, out: Path, *overrides: str):
    """A small, fast config: 20 articles, one thread, few steps."""
    base = [
        f"model.name={model_dir}",
        "data.source=data/sample_news.jsonl",
        "data.max_examples=20",
        f"train.output_dir={out}",
        "train.batch_size=8",
        "train.learning_rate=3e-3",
        "train.warmup_steps=2",
        "train.max_steps=16",
        "train.eval_steps=4",
        "train.save_steps=4",
        "train.logging_steps=2",
        "train.num_threads=1",
        "eval.max_examples=3",
        "eval.examples_shown=4",
        "eval.batch_size=8",
        "generation.max_new_tokens=8",
    ]
    return load_config(REPO / "config" / "config.yml", [*base, *overrides])


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # data.source and cache paths are relative to the repository


# -- batching -------------------------------------------------------------------------------


def test_collator_pads_each_batch_to_its_own_longest_example():
    feats = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "length": 3},
        {"input_ids": [8], "attention_mask": [1], "labels": [8], "length": 1},
    ]
    batch = PadToLongest(pad_token_id=0)(feats)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert PadToLongest(0, pad_to_multiple_of=8)(feats)["input_ids"].shape == (2, 8)


def test_length_grouped_sampler_groups_lengths_and_depends_only_on_seed_and_epoch():
    lengths = [int(x) for x in torch.randint(5, 200, (400,), generator=torch.Generator().manual_seed(1))]
    sampler = LengthGroupedSampler(lengths, group_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(400))
    torch.manual_seed(999)  # the global RNG must not matter (resume, several processes)
    assert list(LengthGroupedSampler(lengths, 8, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    # Padding per batch of 8: far below random batching.
    def waste(order):
        groups = [order[i : i + 8] for i in range(0, len(order), 8)]
        return sum(max(lengths[i] for i in g) * len(g) - sum(lengths[i] for i in g) for g in groups)

    assert waste(first) < 0.2 * waste(torch.randperm(400).tolist())


def test_length_grouped_sampler_never_mixes_theme_and_article_examples():
    # The training set's real shape: half short theme prompts, half long article prompts.
    # Batches that mix the two pad a ~25-token example to ~200 tokens.
    gen = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(18, 32, (40,), generator=gen)]
    lengths += [int(x) for x in torch.randint(120, 214, (40,), generator=gen)]
    for epoch in range(3):
        sampler = LengthGroupedSampler(lengths, group_size=8, seed=0)
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(80))
        for i in range(0, 80, 8):
            kinds = {lengths[j] >= 100 for j in order[i : i + 8]}
            assert len(kinds) == 1, f"epoch {epoch}, batch {i // 8} mixes short and long examples"


def test_trainer_loss_skips_prompt_logits_but_equals_the_model_loss(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.train import HeadlineTrainer, training_arguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = tiny_cfg(tiny_model_dir, tmp_path)
    trainer = HeadlineTrainer(model=model, args=training_arguments(cfg, tmp_path, eval_strategy="no",
                                                                   load_best_model_at_end=False))
    assert trainer._keep_logits
    feats = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
             {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, -100, 14]}]
    batch = PadToLongest(0)(feats)
    with torch.no_grad():
        expected = model(**batch).loss
        loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert outputs.logits.shape[1] == 6 - 2  # from position 2 (predicts the first label at 3)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


# -- a full run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    os.chdir(REPO)
    out = tmp_path_factory.mktemp("runs")
    progress = out / "progress.jsonl"
    cfg = tiny_cfg(tiny_model_dir, out)
    run_dir = train(cfg, progress_json=progress, show_bar=False)
    return run_dir, progress, cfg


def test_training_lowers_the_loss(finished_run):
    run_dir, _, _ = finished_run
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    val = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert len(losses) >= 5 and len(val) == 4
    assert losses[-1] < losses[0] - 0.5, losses
    assert val[-1] < val[0], val


def test_run_folder_has_every_artefact(finished_run):
    run_dir, _, cfg = finished_run
    meta = runs.read_run(run_dir)
    assert meta["status"] == "finished" and len(meta["version"]) == 12
    from trainer.modeling import weights_version

    assert meta["version"] == weights_version(run_dir / "model")
    assert load_config(run_dir / "config.yml") == cfg
    for name in ("data_report.json", "data_report.md", "metrics.jsonl", "loss_curve.png", "MODEL_CARD.md",
                 "eval.json", "eval.md"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = run_dir / "model"
    assert list(model.glob("*.safetensors")) and (model / "tokenizer.json").is_file()
    assert (model / "generation_config.json").is_file()
    assert not list(model.glob("*.bin")) and not list(model.glob("*.pt"))
    assert (run_dir.parent / "latest").resolve() == run_dir
    assert list((run_dir / "checkpoints").glob("checkpoint-*"))
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert str(cfg.model.name) in card and "Evaluation" in card and "ROUGE-L" in card


def test_progress_json_follows_the_contract(finished_run):
    run_dir, progress, _ = finished_run
    evs = events(progress)
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "done"
    for kind in ("step", "eval", "checkpoint", "eval_result", "samples"):
        assert kind in kinds, kind
    keys = {
        "start": {"run_dir", "total_steps", "epochs", "examples", "time"},
        "step": {"step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_s", "elapsed_s", "eta_s"},
        "eval": {"step", "val_loss", "val_perplexity"},
        "checkpoint": {"step", "path"},
        "log": {"level", "message"},
        "eval_result": {"metrics"},
        "samples": {"samples"},
        "done": {"run_dir", "status"},
    }
    for e in evs:
        assert set(e) - {"event"} == keys[e["event"]], e
    start = evs[0]
    assert start["total_steps"] == 16
    assert start["examples"]["train"] > 0 and start["examples"]["validation"] > 0
    assert start["run_dir"] == str(run_dir)
    steps = [e for e in evs if e["event"] == "step"]
    assert steps[-1]["step"] == 16 and all(e["tokens_per_s"] > 0 for e in steps)
    assert all(Path(e["path"]).name == f"checkpoint-{e['step']}" for e in evs if e["event"] == "checkpoint")
    samples = next(e for e in evs if e["event"] == "samples")["samples"]
    assert samples and set(samples[0]) == {"theme", "category", "base", "fine_tuned"}
    assert evs[-1] == {"event": "done", "run_dir": str(run_dir), "status": "finished"}


# -- resume ---------------------------------------------------------------------------------


class CrashAt(TrainerCallback):
    """Simulates a kill: the process dies mid-run, after a checkpoint, without cleaning up."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated kill")


def test_kill_and_resume_lands_on_the_same_loss_curve(tiny_model_dir, tmp_path):
    overrides = ["train.max_steps=9", "train.eval_steps=3", "train.save_steps=3", "train.logging_steps=1"]
    whole = train(tiny_cfg(tiny_model_dir, tmp_path / "a", *overrides), evaluate_after=False, show_bar=False)

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "b", *overrides)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, evaluate_after=False, show_bar=False, callbacks=[CrashAt(5)])
    [killed] = runs.list_runs(tmp_path / "b")
    assert runs.read_run(killed)["status"] == "failed"
    assert runs.last_checkpoint(killed).name == "checkpoint-3"

    resumed = train(cfg, resume=True, evaluate_after=False, show_bar=False)
    assert resumed == killed and runs.read_run(resumed)["status"] == "finished"
    a, b = read_metrics(whole), read_metrics(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no duplicated rows after the resume
    for key in ("loss", "val_loss"):
        xs = [r[key] for r in a if key in r]
        ys = [r[key] for r in b if key in r]
        assert len(xs) == len(ys) and len(xs) >= 3
        assert ys == pytest.approx(xs, rel=1e-5, abs=1e-6), key


def test_sigint_saves_a_checkpoint_marks_cancelled_and_exits_130_then_resumes(tiny_model_dir, tmp_path):
    progress = tmp_path / "progress.jsonl"
    sets = ["model.name=" + str(tiny_model_dir), "data.max_examples=20", f"train.output_dir={tmp_path}",
            "train.max_steps=40", "train.eval_steps=20", "train.save_steps=20", "train.logging_steps=1",
            "train.warmup_steps=0", "train.num_threads=1"]
    cmd = [sys.executable, "-m", "trainer.cli", "train", "--no-eval", "--progress-json", str(progress)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if progress.exists() and '"event": "step"' in progress.read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    evs = events(progress)
    assert evs[-1]["event"] == "cancelled" and evs[-1]["checkpoint"]
    checkpoint = Path(evs[-1]["checkpoint"])
    assert (checkpoint / "trainer_state.json").is_file()
    run_dir = Path(evs[-1]["run_dir"])
    assert runs.read_run(run_dir)["status"] == "cancelled"
    assert "Traceback" not in err

    from trainer.cli import main

    assert main(["train", "--resume", str(run_dir), "--no-eval", "--set", f"train.output_dir={tmp_path}"]) == 0
    assert runs.read_run(run_dir)["status"] == "finished"
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == list(range(1, 41))


# -- variants -------------------------------------------------------------------------------


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_model_dir, tmp_path):
    # A learning rate of 0.3 with a constant schedule wrecks the model after a step or two.
    cfg = tiny_cfg(tiny_model_dir, tmp_path, "train.learning_rate=0.3", "train.scheduler=constant",
                   "train.warmup_steps=0", "train.max_steps=40", "train.eval_steps=1", "train.save_steps=1",
                   "train.save_total_limit=1", "train.early_stopping_patience=2", "train.logging_steps=1")
    progress = tmp_path / "p.jsonl"
    run_dir = train(cfg, progress_json=progress, evaluate_after=False, show_bar=False)
    val = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert len(val) < 40
    best = val.index(min(val))
    assert len(val) == best + 1 + 2  # stopped after 2 evaluations without improvement
    assert any(e["event"] == "log" and "early stopping" in e["message"] for e in events(progress))
    assert runs.read_run(run_dir)["status"] == "finished"


def test_lora_trains_and_saves_a_merged_plain_model(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg(tiny_model_dir, tmp_path, "model.method=lora", "train.max_steps=4",
                   "train.learning_rate=1e-2", "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [c_attn]}")
    run_dir = train(cfg, evaluate_after=False, show_bar=False)
    weights = {}
    for path in (run_dir / "model").glob("*.safetensors"):
        weights.update(load_file(path))
    assert weights and not any("lora" in k for k in weights)
    assert not (run_dir / "model" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    b, m = dict(base.named_parameters()), dict(merged.named_parameters())
    assert not torch.equal(b["transformer.h.0.attn.c_attn.weight"], m["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(b["transformer.h.0.mlp.c_fc.weight"], m["transformer.h.0.mlp.c_fc.weight"])


def test_loading_the_best_checkpoint_of_a_tied_model_warns_of_nothing(tiny_model_dir, tmp_path):
    """The tiny model ties its LM head to its embedding (as SmolLM2 does): the checkpoint holds
    that weight once, and loading the best checkpoint at the end used to warn that the LM head
    was missing. It is tied, and the run's model still has one shared weight."""
    import logging

    from transformers import AutoModelForCausalLM

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # "Loading best model" is an info
    try:
        cfg = tiny_cfg(tiny_model_dir, tmp_path, "train.max_steps=4", "train.eval_steps=2", "train.save_steps=2")
        run_dir = train(cfg, progress_json=None, show_bar=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [r.getMessage() for r in records]
    assert any("Loading best model" in m for m in messages), messages  # the best checkpoint was loaded
    assert not [m for m in messages if "missing keys" in m or "unexpected keys" in m], messages
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert model.lm_head.weight is model.get_input_embeddings().weight
