"""Evaluation: ROUGE on known pairs, output statistics, and a full eval of a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.evaluate import evaluate, output_stats, rouge, score_outputs, validation_nll

REPO = Path(__file__).resolve().parents[2]


def test_rouge_identical_is_one_and_disjoint_is_zero():
    same = rouge(["Oil prices climb to record high"], ["Oil prices climb to record high"])
    assert same == {"rouge1": pytest.approx(1.0), "rouge2": pytest.approx(1.0), "rougeL": pytest.approx(1.0)}
    assert rouge(["minister resigns"], ["oil prices climb"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge([""], ["oil prices"])["rouge1"] == 0.0


def test_rouge_partial_match_by_hand():
    # pred "the cat sat" vs ref "the cat ran": unigrams 2/3 both ways -> F1 2/3;
    # bigrams {the cat, cat sat} vs {the cat, cat ran}: 1/2 -> 0.5; LCS "the cat" -> 2/3.
    r = rouge(["the cat sat"], ["the cat ran"])
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(0.5)
    assert r["rougeL"] == pytest.approx(2 / 3)
    # Stemming: "prices"/"price", "rising"/"rise" match; mean over two pairs.
    r = rouge(["price rise", "x"], ["prices rising", "x"])
    assert r["rouge1"] == pytest.approx(1.0)


def test_output_stats_counts_empty_and_runaway():
    stats = output_stats(["one two three", "", "a " * 30, "cut off"], [True, True, True, False], runaway_words=20)
    assert stats["empty_rate"] == 0.25
    assert stats["runaway_rate"] == 0.5  # 30 words, and one cut without EOS
    assert stats["mean_words"] == pytest.approx((3 + 0 + 30 + 2) / 4)


def test_score_outputs_reports_overall_and_per_task():
    rows = [{"task": "theme", "reference": "oil prices rise"}, {"task": "article", "reference": "team wins cup"}]
    result = score_outputs(rows, [("oil prices rise", True), ("nothing alike", True)], runaway_words=20)
    assert result["theme"]["rougeL"] == pytest.approx(1.0)
    assert result["article"]["rougeL"] == 0.0
    assert result["overall"]["rougeL"] == pytest.approx(0.5) and result["overall"]["n"] == 2


def test_validation_nll_counts_only_label_tokens(tiny_model_dir):
    import datasets
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ds = datasets.Dataset.from_dict({
        "input_ids": [[5, 6, 7, 8], [9, 10]], "attention_mask": [[1] * 4, [1] * 2],
        "labels": [[-100, -100, 7, 8], [-100, 10]], "length": [4, 2]})
    nll, count = validation_nll(model, ds, pad_token_id=0, batch_size=2)
    assert count == 3
    with torch.no_grad():
        total = 0.0
        for ids, labels in [([5, 6, 7, 8], [7, 8]), ([9, 10], [10])]:
            logits = model(torch.tensor([ids])).logits[0]
            total += F.cross_entropy(logits[len(ids) - len(labels) - 1 : -1], torch.tensor(labels),
                                     reduction="sum").item()
    assert nll == pytest.approx(total / 3, rel=1e-5)


def test_eval_of_a_tiny_run_writes_json_and_markdown_with_both_models(tiny_model_dir, tmp_path, monkeypatch):
    from tests.trainer.test_train import tiny_cfg
    from trainer.train import train

    monkeypatch.chdir(REPO)
    cfg = tiny_cfg(tiny_model_dir, tmp_path, "train.max_steps=4", "train.eval_steps=2", "train.save_steps=2")
    run_dir = train(cfg, evaluate_after=False, show_bar=False)
    assert not (run_dir / "eval.json").exists()

    result = evaluate(run_dir, cfg)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved["models"]) == {"base", "fine_tuned"}
    assert saved["n_articles"] == 3 and saved["n_prompts"] == 6  # theme + article prompt per article
    for model in saved["models"].values():
        assert {"overall", "theme", "article", "val_perplexity", "val_loss"} <= set(model)
        for key in ("rouge1", "rouge2", "rougeL", "mean_words", "empty_rate", "runaway_rate", "n"):
            assert key in model["overall"]
    # Training lowered the validation loss, and eval measures it the same way for both models.
    assert saved["models"]["fine_tuned"]["val_perplexity"] < saved["models"]["base"]["val_perplexity"]
    assert len(saved["examples"]) == 4 and {e["task"] for e in saved["examples"]} == {"theme", "article"}
    md = (run_dir / "eval.md").read_text()
    assert "| Metric | Task | Base" in md and "Fine-tuned" in md and "ROUGE-L F1" in md
    assert md.count("\n| theme |") + md.count("\n| article |") == 4  # example rows

    # Without the base model: one column, and examples carry no base output.
    cfg1 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"compare_base": False})})
    result = evaluate(run_dir, cfg1)
    assert set(result["models"]) == {"fine_tuned"} and result["examples"][0]["base"] is None
