"""bench/batch_steps.py on a tiny model: its runs decode the same headlines alone and batched,
its step table and profile are filled, and a headline that differs fails it."""

from __future__ import annotations

import json
import statistics

import pytest

pytest.importorskip("torch")


def run(tmp_path, model_dir, *extra):
    import torch

    from bench.batch_steps import main

    out = tmp_path / "result.json"
    rc = main(["--model", str(model_dir), "--rows", "2", "--requests", "6", "--repeats", "2",
               "--max-new-tokens", "5", "--threads", str(torch.get_num_threads()), "--json", str(out),
               *extra])
    return rc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tests.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.mark.parametrize("weights", ["float16", "float32"])
def test_alone_and_batched_agree_and_the_steps_are_timed(tmp_path, llama_dir, weights, capsys):
    rc, result = run(tmp_path, llama_dir, "--weights", weights, "--profile")

    assert rc == 0
    assert result["weights"] == weights and result["rows"] == 2
    # 2 repeats x 6 requests, every one decoded alone and batched, none differing.
    assert result["headlines_compared"] == 12 and result["headlines_differing"] == 0
    assert len(result["rounds"]) == 2
    assert all(r["alone_ms"] > 0 and r["batched_ms"] > 0 for r in result["rounds"])
    assert all(r["ratio"] == pytest.approx(r["alone_ms"] / r["batched_ms"]) for r in result["rounds"])
    assert result["ratio"] == pytest.approx(statistics.median(r["ratio"] for r in result["rounds"]))
    steps = result["steps_ms"]
    assert steps["prompt alone"] > 0 and steps["1-row step"] > 0 and steps["2-row step"] > 0
    assert 0 < result["tokens_a_headline"] <= 5
    kinds = list(result["profile_ms"])
    assert kinds[0].startswith("2 rows, 0 joining") and kinds[1].startswith("2 rows, 1 joining")
    assert result["profile_ms"][kinds[0]]  # operators of the plain steps, by self CPU time
    printed = capsys.readouterr().out
    assert "Headlines equal alone and batched: 12 of 12" in printed
    assert "| 2-row step |" in printed


def test_a_headline_that_differs_batched_fails_the_run(tmp_path, llama_dir, monkeypatch, capsys):
    from bench import batch_steps

    real = batch_steps.run_batched

    def off_by_one(*args, **kwargs):
        ms, texts = real(*args, **kwargs)
        texts[0] = texts[0] + " (changed)"
        return ms, texts

    monkeypatch.setattr(batch_steps, "run_batched", off_by_one)
    rc, result = run(tmp_path, llama_dir, "--repeats", "1")

    assert rc == 1
    assert result["headlines_differing"] == 1
    assert "DIFFERS" in capsys.readouterr().out
