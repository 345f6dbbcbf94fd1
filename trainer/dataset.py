"""Turn clean articles into prompts, targets and the tokenized DatasetDict the trainer uses.

Each article gives one example per task in ``prompt.tasks``: theme -> headline and
article -> headline. The prompt comes from the templates in config.yml
(``format_prompt``, shared with generation and the service); the target is
" " + headline, followed by the tokenizer's EOS so that a fine-tuned model stops by
itself after one headline. Only the target tokens carry a loss: prompt labels are -100.

Splits: train and validation examples show the category in a deterministic
``prompt.category_rate`` share of prompts (validation loss then measures the same mix
that is trained). Test examples, which the evaluation scores with ROUGE, never show the
category unless ``category_in_eval`` is asked for: theme -> headline without a category
is the product's main use, and it makes base and fine-tuned models see the same prompts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config import Config
from config.schema import PromptConfig
from trainer.data import Article, DataReport, load_articles, split_articles
from trainer.errors import TrainerError
from trainer.themes import ThemeBuilder

if TYPE_CHECKING:  # heavy imports only where they are used
    import datasets

SPLITS = ("train", "validation", "test")
# Labels of this value carry no loss (the default ignore_index of torch's cross-entropy).
IGNORE_INDEX = -100
# When a prompt must be cut, its last tokens are kept: they hold the "Headline:" cue that
# the model must see right before the headline.
_PROMPT_TAIL_TOKENS = 8


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str
    task: str
    article_id: str
    category: str | None  # the category shown in the prompt (None when not shown)
    title: str
    theme: str | None


def format_prompt(
    prompt_cfg: PromptConfig,
    task: str,
    *,
    theme: str | None = None,
    article: str | None = None,
    category: str | None = None,
) -> str:
    """The prompt for one task, from the config's templates; the one prompt builder."""
    if task == "theme":
        if not theme:
            raise TrainerError("prompt: task 'theme' needs a theme")
        key = "theme_category_template" if category else "theme_template"
    elif task == "article":
        if not article:
            raise TrainerError("prompt: task 'article' needs an article")
        key = "article_category_template" if category else "article_template"
    else:
        raise TrainerError(f"prompt.tasks: unknown task {task!r} (known: theme, article)")
    template = getattr(prompt_cfg, key)
    try:
        return template.format(theme=theme, article=article, category=category)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise TrainerError(
            f"prompt.{key}: bad placeholder in {template!r} ({exc!r}); "
            "use {theme}, {article} and {category}, and double literal braces: {{ }}"
        ) from exc


def truncate_article(tokenizer: Any, text: str, max_tokens: int) -> str:
    """text cut to at most max_tokens tokens (no special tokens), on a token boundary."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        # Cutting the original string at the token's end offset keeps it exact; decoding
        # the ids could split a multi-byte character of a byte-level BPE.
        return text[: enc["offset_mapping"][max_tokens - 1][1]].rstrip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens]).rstrip()


def _shows_category(seed: int, article_id: str, task: str, rate: float) -> bool:
    # A hash instead of a random generator: the decision for one example does not depend
    # on which other examples exist or in which order they are built.
    digest = hashlib.sha256(f"{seed}:{article_id}:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def build_examples(
    articles: list[Article],
    themes: ThemeBuilder,
    prompt_cfg: PromptConfig,
    tokenizer: Any,
    seed: int,
    *,
    for_training: bool = True,
    category_in_eval: bool = False,
) -> list[Example]:
    """One example per article and task (prompt.tasks), in article order.

    for_training: the category is shown in a prompt.category_rate share, chosen per
    (seed, article, task). Otherwise (evaluation) it is shown always if category_in_eval,
    else never.
    """
    theme_list = themes.themes(articles) if "theme" in prompt_cfg.tasks else [None] * len(articles)
    examples = []
    for article, theme in zip(articles, theme_list):
        for task in prompt_cfg.tasks:
            if for_training:
                show = _shows_category(seed, article.id, task, prompt_cfg.category_rate)
            else:
                show = category_in_eval
            category = article.category if show else None
            if task == "theme":
                prompt = format_prompt(prompt_cfg, task, theme=theme, category=category)
            else:
                body = truncate_article(tokenizer, article.text, prompt_cfg.article_max_tokens)
                prompt = format_prompt(prompt_cfg, task, article=body, category=category)
            examples.append(
                Example(
                    prompt=prompt,
                    # Leading space: templates end with "Headline:" and the headline follows it.
                    target=" " + article.title,
                    task=task,
                    article_id=article.id,
                    category=category,
                    title=article.title,
                    theme=theme if task == "theme" else None,
                )
            )
    return examples


def _token_ids(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids with the tokenizer's special tokens, target ids + EOS), uncut."""
    if tokenizer.eos_token_id is None:
        raise TrainerError("model: the tokenizer has no EOS token; a headline could never end")
    # add_special_tokens=True: Gemma needs <bos> first; GPT-2 and SmolLM add nothing.
    prompt_ids = list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])
    if len(prompt_ids) > 1 and prompt_ids[-1] == tokenizer.eos_token_id:
        # Some tokenizers are set to append EOS to every text; inside a prompt it would
        # teach the model that EOS comes before the headline.
        prompt_ids.pop()
    target_ids = list(tokenizer(example.target, add_special_tokens=False)["input_ids"])
    return prompt_ids, target_ids + [tokenizer.eos_token_id]


def _fit(prompt_ids: list[int], target_ids: list[int], max_seq_len: int) -> tuple[list[int], list[int]]:
    """Cut an example to max_seq_len tokens, from the prompt's middle, never the target."""
    if len(prompt_ids) + len(target_ids) <= max_seq_len:
        return prompt_ids, target_ids
    if len(target_ids) > max_seq_len // 2:
        # Only when the headline alone nearly fills the window: keep half for the prompt
        # and cut the headline, still ending with EOS.
        target_ids = target_ids[: max_seq_len - max_seq_len // 2 - 1] + target_ids[-1:]
    budget = max_seq_len - len(target_ids)
    tail = min(_PROMPT_TAIL_TOKENS, budget // 2)
    # The head keeps <bos>, the category line and the article's lede; the tail the cue.
    prompt_ids = prompt_ids[: budget - tail] + (prompt_ids[-tail:] if tail else [])
    return prompt_ids, target_ids


def tokenize_example(tokenizer: Any, example: Example, max_seq_len: int) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels (-100 on the prompt; headline + EOS trained)."""
    prompt_ids, target_ids = _fit(*_token_ids(tokenizer, example), max_seq_len)
    input_ids = prompt_ids + target_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }


def _tokenized_dataset(tokenizer: Any, examples: list[Example], max_seq_len: int) -> datasets.Dataset:
    import datasets

    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
    for example in examples:
        row = tokenize_example(tokenizer, example, max_seq_len)
        for key in ("input_ids", "attention_mask", "labels"):
            columns[key].append(row[key])
        columns["length"].append(len(row["input_ids"]))
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int64")),
            "attention_mask": datasets.Sequence(datasets.Value("int64")),
            "labels": datasets.Sequence(datasets.Value("int64")),
            "length": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def build_examples_by_split(cfg: Config, tokenizer: Any) -> tuple[dict[str, list[Example]], DataReport]:
    """Load, clean and split the data; themes fitted on the train split only."""
    articles, report = load_articles(cfg.data)
    splits = split_articles(articles, cfg.data.split, cfg.data.seed)
    report.splits = {name: len(splits[name]) for name in SPLITS}
    # Fitting on train only keeps test articles' words out of the IDF the themes are built from.
    themes = ThemeBuilder(cfg.prompt.theme_keywords).fit(splits["train"])
    examples = {
        name: build_examples(
            splits[name], themes, cfg.prompt, tokenizer, cfg.data.seed, for_training=name != "test"
        )
        for name in SPLITS
    }
    return examples, report


def build_dataset_dict(
    cfg: Config, tokenizer: Any
) -> tuple[datasets.DatasetDict, DataReport, dict[str, list[Example]]]:
    """The tokenized train / validation / test sets, the data report and the examples."""
    import datasets

    examples, report = build_examples_by_split(cfg, tokenizer)
    dsd = datasets.DatasetDict(
        {name: _tokenized_dataset(tokenizer, examples[name], cfg.train.max_seq_len) for name in SPLITS}
    )
    return dsd, report, examples


def _stats(values: list[int]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return f"min {ordered[0]:>4}  mean {sum(ordered) / len(ordered):6.1f}  p95 {p95:>4}  max {ordered[-1]:>4}"


def dry_run_text(cfg: Config, tokenizer: Any, n: int = 3) -> str:
    """A few examples as the model sees them, masked part marked, and token-length stats.

    Each example is decoded from its real token ids and labels: the part inside
    [[ ... ]] has label -100 (no loss); the part inside << ... >> is trained.
    """
    examples, report = build_examples_by_split(cfg, tokenizer)
    max_len = cfg.train.max_seq_len
    lines = [
        f"Data: {report.source} ({report.format}): {report.rows_read} rows read, "
        f"{report.rows_kept} kept, dropped {report.dropped or 'none'}; "
        f"splits {report.splits}",
        "",
        "Legend: [[prompt: masked, label -100, no loss]] <<headline + EOS: trained>>",
        "",
    ]
    for i, example in enumerate(examples["train"][:n], start=1):
        row = tokenize_example(tokenizer, example, max_len)
        masked = [t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX]
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
        shown = f"category {example.category}" if example.category else "no category"
        lines += [
            f"--- train example {i}: task {example.task}, {shown}, "
            f"{len(masked)} masked + {len(trained)} trained tokens",
            f"[[{tokenizer.decode(masked)}]]<<{tokenizer.decode(trained)}>>",
            "",
        ]
    lines.append(f"Token lengths (max_seq_len {max_len}; longer examples are cut on the prompt side):")
    for name in SPLITS:
        prompt_lens, target_lens, totals = [], [], []
        for example in examples[name]:
            prompt_ids, target_ids = _token_ids(tokenizer, example)
            prompt_lens.append(len(prompt_ids))
            target_lens.append(len(target_ids))
            totals.append(len(prompt_ids) + len(target_ids))
        cut = sum(total > max_len for total in totals)
        lines += [
            f"  {name}: {len(examples[name])} examples, {cut} cut at {max_len}",
            f"    prompt  {_stats(prompt_lens)}",
            f"    target  {_stats(target_lens)}",
            f"    total   {_stats(totals)}",
        ]
    return "\n".join(lines) + "\n"
