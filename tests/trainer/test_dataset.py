"""Prompts, label masking and the tokenized DatasetDict (trainer.dataset), with the tiny tokenizer."""

from __future__ import annotations

import pytest

from config import load_config
from config.schema import PromptConfig
from trainer.data import Article
from trainer.dataset import (
    IGNORE_INDEX,
    Example,
    build_dataset_dict,
    build_examples,
    dry_run_text,
    format_prompt,
    tokenize_example,
    truncate_article,
)
from trainer.errors import TrainerError
from trainer.themes import ThemeBuilder


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def sample_cfg(repo_root):
    return load_config(None, [f"data.source={repo_root / 'data' / 'sample_news.jsonl'}"])


ARTICLES = [
    Article(
        f"a{i}", f"Oil prices climb for day {i}", f"Crude oil rose again today, story {i}. " * 3, "business"
    )
    for i in range(40)
]


def test_format_prompt_picks_the_template():
    cfg = PromptConfig()
    assert format_prompt(cfg, "theme", theme="oil price") == "Theme: oil price\nHeadline:"
    assert (
        format_prompt(cfg, "theme", theme="oil price", category="business")
        == "Category: business\nTheme: oil price\nHeadline:"
    )
    assert format_prompt(cfg, "article", article="Body.") == "Article: Body.\nHeadline:"
    assert format_prompt(cfg, "article", article="Body.", category="tech").startswith("Category: tech\n")


def test_format_prompt_errors_name_the_key():
    bad = PromptConfig(theme_template="Theme: {theme} {oops}\nHeadline:")
    with pytest.raises(TrainerError, match="prompt.theme_template"):
        format_prompt(bad, "theme", theme="x")
    with pytest.raises(TrainerError, match="needs a theme"):
        format_prompt(PromptConfig(), "theme")
    with pytest.raises(TrainerError, match="unknown task"):
        format_prompt(PromptConfig(), "summary", theme="x")


def test_truncate_article_cuts_on_a_token_boundary(tokenizer):
    text = "Oil prices rise as supply fears grow in global markets. " * 10
    cut = truncate_article(tokenizer, text, 12)
    ids = tokenizer(cut, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 12 and text.startswith(cut)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"][: len(ids)]
    assert truncate_article(tokenizer, "Short text.", 12) == "Short text."


def test_labels_mask_the_prompt_and_end_with_eos(tokenizer):
    example = Example(
        prompt="Theme: oil price\nHeadline:",
        target=" Oil prices climb to record high",
        task="theme",
        article_id="a",
        category=None,
        title="Oil prices climb to record high",
        theme="oil price",
    )
    row = tokenize_example(tokenizer, example, max_seq_len=256)
    prompt_len = len(tokenizer(example.prompt)["input_ids"])
    assert row["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert all(label != IGNORE_INDEX for label in row["labels"][prompt_len:])
    assert row["input_ids"][-1] == row["labels"][-1] == tokenizer.eos_token_id
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    trained = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " Oil prices climb to record high" + tokenizer.eos_token
    assert tokenizer.decode(row["input_ids"][:prompt_len]) == example.prompt


def test_truncation_keeps_the_target_and_the_cue(tokenizer):
    example = Example(
        prompt="Article: " + "Oil prices rise as supply fears grow. " * 40 + "\nHeadline:",
        target=" Oil prices climb",
        task="article",
        article_id="a",
        category=None,
        title="Oil prices climb",
        theme=None,
    )
    row = tokenize_example(tokenizer, example, max_seq_len=48)
    assert len(row["input_ids"]) == 48
    trained = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " Oil prices climb" + tokenizer.eos_token
    prompt = tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE_INDEX])
    assert prompt.startswith("Article: Oil prices") and prompt.endswith("\nHeadline:")


def test_build_examples_tasks_targets_and_category_rate(tokenizer):
    themes = ThemeBuilder(3).fit(ARTICLES)
    cfg = PromptConfig(category_rate=0.5, article_max_tokens=16)
    examples = build_examples(ARTICLES, themes, cfg, tokenizer, seed=1)
    assert len(examples) == 80
    assert [e.task for e in examples[:2]] == ["theme", "article"]
    assert all(e.target == " " + e.title for e in examples)
    shown = sum(e.category is not None for e in examples)
    assert 20 <= shown <= 60
    assert all(e.prompt.startswith("Category: business\n") == (e.category is not None) for e in examples)
    # Deterministic; articles cut to article_max_tokens inside the prompt.
    assert build_examples(ARTICLES, themes, cfg, tokenizer, seed=1) == examples
    article_ex = examples[1]
    body = article_ex.prompt.split("Article: ", 1)[1].rsplit("\nHeadline:", 1)[0]
    assert len(tokenizer(body, add_special_tokens=False)["input_ids"]) <= 16
    # Evaluation prompts: no category unless asked for.
    evaluation = build_examples(ARTICLES, themes, cfg, tokenizer, seed=1, for_training=False)
    assert all(e.category is None for e in evaluation)
    with_cat = build_examples(
        ARTICLES, themes, cfg, tokenizer, seed=1, for_training=False, category_in_eval=True
    )
    assert all(e.category == "business" for e in with_cat)
    only_theme = build_examples(ARTICLES, themes, PromptConfig(tasks=["theme"]), tokenizer, seed=1)
    assert {e.task for e in only_theme} == {"theme"} and len(only_theme) == 40


def test_build_dataset_dict_on_sample_data(sample_cfg, tokenizer):
    dsd, report, examples = build_dataset_dict(sample_cfg, tokenizer)
    assert set(dsd) == {"train", "validation", "test"}
    assert report.splits == {name: len(examples[name]) // 2 for name in dsd}
    assert sum(report.splits.values()) == report.rows_kept >= 160
    for name, ds in dsd.items():
        assert set(ds.column_names) == {"input_ids", "attention_mask", "labels", "length"}
        assert len(ds) == len(examples[name])
        row = ds[0]
        assert row["length"] == len(row["input_ids"]) <= sample_cfg.train.max_seq_len
        assert row["labels"][-1] == tokenizer.eos_token_id
    # No article is in two splits.
    ids = {name: {e.article_id for e in examples[name]} for name in dsd}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"]
    assert all(e.category is None for e in examples["test"])


def test_dry_run_text_marks_masked_and_trained_parts(sample_cfg, tokenizer):
    text = dry_run_text(sample_cfg, tokenizer, n=2)
    assert text.count("[[") == 2 + 1 and text.count("<<") == 2 + 1  # + the legend line
    assert "<|endoftext|>>>" in text
    assert "166 rows read" in text
    for name in ("train", "validation", "test"):
        assert f"  {name}: " in text
    assert "p95" in text and "cut at 256" in text


def test_tokenizer_that_appends_eos_to_every_text_keeps_eos_out_of_the_prompt(tokenizer):
    class AppendsEos:
        """A tokenizer configured with add_eos_token, as some Llama-style ones are."""

        eos_token_id = tokenizer.eos_token_id

        def __call__(self, text, add_special_tokens=True):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return {"input_ids": ids + [self.eos_token_id] if add_special_tokens else ids}

    example = Example(
        prompt="Theme: oil\nHeadline:",
        target=" Oil rises",
        task="theme",
        article_id="a",
        category=None,
        title="Oil rises",
        theme="oil",
    )
    row = tokenize_example(AppendsEos(), example, max_seq_len=64)
    assert row["input_ids"].count(tokenizer.eos_token_id) == 1
    assert row["input_ids"][-1] == tokenizer.eos_token_id
