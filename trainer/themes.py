"""Short themes for articles ("oil prices opec"), the input side of the theme -> headline task.

A user of the product types a few words ("oil price", "football transfer") and gets a
headline. To train that, each article is paired with a theme of the same kind: its most
salient content words by TF-IDF over the training corpus, title words counted more, a
bigram kept whole when it is the most salient term. Deterministic: same corpus, same themes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from trainer.data import Article

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

# Words that are frequent in news copy but say nothing about the story.
NEWS_STOP_WORDS = frozenset(
    """
    said says say saying told tells according year years month months week weeks day days
    today yesterday tomorrow time times new old just like make makes made way ways mr mrs ms
    people thing things lot lots set sets got gets going want wants use used using did does
    don doesn didn isn wasn ll ve also including includes number numbers
    monday tuesday wednesday thursday friday saturday sunday expected likely added ago little near amid despite
    """.split()
)
# Verbs that headlines are made of ("X wins Y", "firm unveils Z"): a user types the topic,
# not the verb, so they never make a theme on their own.
HEADLINE_VERBS = frozenset(
    """
    wins win won beat beats hit hits faces face calls call plans plan unveils unveil
    reveals reveal sees see gets takes take backs back boost boosts lifted lifts rose fell climb climbs passes pass secures secure launches launch signs sign
    warns warn urged urges announces announced raises raised need needs seeks
    seek set sets opens open makes hails hail vows vow slams slam defends defend
    """.split()
)


@functools.cache
def stop_words() -> list[str]:
    # sklearn takes ~1-2 s to import; the service builds prompts through this package
    # without ever fitting themes, so it is imported only when needed.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return sorted(ENGLISH_STOP_WORDS | NEWS_STOP_WORDS | HEADLINE_VERBS)

# Letters only, at least 3: numbers, prices and initials do not make themes a user would type.
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{3,}\b"
# A title word is worth this many body words: the title says what the story is about.
TITLE_WEIGHT = 3.0


def _same_word(a: str, b: str) -> bool:
    """Crude stemming: "price"/"prices", "bank"/"banking" count as one word."""
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and len(short) >= 3 and len(long) - len(short) <= 3


class ThemeBuilder:
    """Fit on the training articles, then ``theme(article)`` gives a few keywords."""

    def __init__(self, keywords: int = 3):
        self.keywords = keywords
        self.vectorizer: TfidfVectorizer | None = None

    def fit(self, articles: Iterable[Article]) -> ThemeBuilder:
        docs = [f"{a.title} {a.text}" for a in articles]
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(
            lowercase=True,
            stop_words=stop_words(),
            token_pattern=TOKEN_PATTERN,
            ngram_range=(1, 2),
            sublinear_tf=True,
        )
        try:
            self.vectorizer.fit(docs)
        except ValueError:
            # No corpus or only stop words: themes fall back to title words (see theme()).
            self.vectorizer = None
        return self

    def theme(self, article: Article) -> str:
        return self.themes([article])[0]

    def themes(self, articles: Sequence[Article]) -> list[str]:
        """Themes for many articles at once (one sparse transform instead of one per article)."""
        if not articles:
            return []
        if self.vectorizer is None:
            return [self._fallback(a, []) for a in articles]
        vocab = self.vectorizer.get_feature_names_out()
        title_m = self.vectorizer.transform([a.title for a in articles])
        body_m = self.vectorizer.transform([a.text for a in articles])
        # A title word the body never uses is often headline wording, not the topic: it gets
        # half the title weight.
        in_body = title_m.multiply(body_m > 0)
        scores = (title_m * (TITLE_WEIGHT / 2) + in_body * (TITLE_WEIGHT / 2) + body_m).tocsr()
        out = []
        for i, article in enumerate(articles):
            row = scores.getrow(i)
            # Highest score first; ties broken by the term so the order never depends on sparsity.
            ranked = sorted(zip(row.data, vocab[row.indices]), key=lambda p: (-p[0], p[1]))
            out.append(self._pick(article, [term for _, term in ranked]))
        return out

    def _pick(self, article: Article, ranked: list[str]) -> str:
        words: list[str] = []
        for term in ranked:
            parts = term.split()
            if len(words) + len(parts) > self.keywords:
                continue
            if any(_same_word(p, w) for p in parts for w in words):
                continue
            if len(parts) == 2 and _same_word(*parts):
                continue
            words += parts
            if len(words) == self.keywords:
                break
        # Reading order (title first, then body) reads more like typed words than score order.
        where = f"{article.title} {article.text}".lower()
        words.sort(key=lambda w: (where.find(w) % (len(where) + 1), w))
        return self._fallback(article, words)

    def _fallback(self, article: Article, words: list[str]) -> str:
        """Fill a short theme with title content words, then the category, in that order."""
        stop = set(stop_words())
        candidates = [w for w in re.findall(TOKEN_PATTERN, article.title.lower()) if w not in stop]
        if article.category:
            candidates.append(article.category.lower())
        for word in candidates:
            if len(words) >= self.keywords:
                break
            if not any(_same_word(word, w) for w in words):
                words.append(word)
        # Last resort for a title made of stop words only: its first words as they are.
        return " ".join(words) or " ".join(article.title.lower().split()[: self.keywords])
