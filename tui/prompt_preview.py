"""One real example formatted with the prompt templates, as the trainer will see it.

The trainer trains only on what follows the prompt: a space, the headline and EOS.
The theme is approximated here by the first salient words of the title (the trainer
uses TF-IDF keywords over the whole corpus, which the wizard does not load).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

EOS = "<EOS>"
WORDS_PER_TOKEN = 0.75
SAMPLE_ROW = {
    "title": "City council approves new bike lanes downtown",
    "text": "The city council voted on Tuesday to build twelve kilometres of protected bike lanes "
    "in the downtown core, after two years of consultation with residents and businesses.",
    "category": "local",
}
_STOP = set(
    "a an the and or but of in on at to for from by with as is are was were be been new "
    "after before over under into about than that this these those its it his her their".split()
)


@dataclass(frozen=True)
class Example:
    task: str  # "theme" | "article"
    template_key: str
    prompt: str
    target: str  # " <headline><EOS>": the trained part


class TemplateError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def theme_of(title: str, n: int) -> str:
    words = [w for w in re.findall(r"[\w'-]+", title.lower()) if w not in _STOP]
    return " ".join(words[: max(1, n)])


def _cut(text: str, tokens: int) -> str:
    words = text.split()
    limit = max(1, int(tokens * WORDS_PER_TOKEN))
    return " ".join(words[:limit])


def _format(key: str, template: str, **fields: str) -> str:
    try:
        return template.format(**fields)
    except KeyError as exc:
        raise TemplateError(key, f"unknown placeholder {{{exc.args[0]}}}") from None
    except (ValueError, IndexError) as exc:
        raise TemplateError(key, f"cannot format: {exc} (write {{{{ and }}}} for literal braces)") from None


def examples(values: dict[str, Any], row: dict[str, Any] | None) -> list[Example]:
    """One example per task; the category variant when the row has a category and rate > 0."""
    row = row or SAMPLE_ROW
    title = str(row.get("title") or "")
    category = row.get("category")
    try:
        rate = float(values["prompt.category_rate"])
        n_words = int(values["prompt.theme_keywords"])
        max_tokens = int(values["prompt.article_max_tokens"])
    except (TypeError, ValueError):
        rate, n_words, max_tokens = 0.5, 3, 192
    with_category = bool(category) and rate > 0
    fields = {
        "theme": theme_of(title, n_words),
        "article": _cut(str(row.get("text") or ""), max_tokens),
        "category": str(category or ""),
    }
    out = []
    tasks = values.get("prompt.tasks")
    for task in tasks if isinstance(tasks, list) else ["theme", "article"]:
        if task not in ("theme", "article"):
            continue
        key = f"prompt.{task}_category_template" if with_category else f"prompt.{task}_template"
        prompt = _format(key, str(values[key]), **fields)
        out.append(Example(task, key, prompt, f" {title}{EOS}"))
    return out
