"""Themes built from articles' salient keywords (trainer.themes)."""

from __future__ import annotations

import pickle

from trainer.data import Article
from trainer.themes import ThemeBuilder

CORPUS = [
    Article(
        "b1",
        "Oil prices soar as Opec cuts output",
        "Crude oil prices jumped after Opec agreed to cut oil output. Brent crude rose 5% to a record.",
        "business",
    ),
    Article(
        "b2",
        "Shares fall on bank worries",
        "Bank shares fell sharply as investors worried about bad loans at the bank.",
        "business",
    ),
    Article(
        "s1",
        "Striker seals record football transfer",
        "The striker joined the club in a record football transfer worth 90m.",
        "sport",
    ),
    Article(
        "s2",
        "Tennis champion wins final in straight sets",
        "The champion won the tennis final in straight sets on Sunday.",
        "sport",
    ),
    Article(
        "t1",
        "New phone has foldable screen",
        "The phone maker showed a foldable screen that opens into a tablet.",
        "tech",
    ),
    Article(
        "p1",
        "Prime minister calls early election",
        "The prime minister called an early election for November, saying voters must decide.",
        "politics",
    ),
]


def test_theme_has_salient_words_and_is_short():
    builder = ThemeBuilder(keywords=3).fit(CORPUS)
    theme = builder.theme(CORPUS[0])
    words = theme.split()
    assert len(words) <= 3 and theme == theme.lower()
    assert "oil" in words and "opec" in words
    assert "football" in builder.theme(CORPUS[2]) and "transfer" in builder.theme(CORPUS[2])
    for article in CORPUS:
        theme = builder.theme(article)
        words = theme.split()
        assert 1 <= len(words) <= 3
        assert len(set(words)) == len(words)
        # No stop words or headline verbs: themes are what a user types.
        assert not {"the", "as", "on", "said", "wins", "calls"} & set(words)


def test_no_two_forms_of_one_word():
    article = Article(
        "x", "Price of oil and oil prices", "Oil price and prices of oil rose. Oil oil oil.", None
    )
    theme = ThemeBuilder(keywords=3).fit(CORPUS + [article]).theme(article)
    words = theme.split()
    assert words.count("oil") == 1
    assert not ({"price", "prices"} <= set(words))


def test_deterministic_and_picklable():
    first = ThemeBuilder(keywords=2).fit(CORPUS)
    second = ThemeBuilder(keywords=2).fit(list(CORPUS))
    themes = first.themes(CORPUS)
    assert themes == second.themes(CORPUS) == [first.theme(a) for a in CORPUS]
    restored = pickle.loads(pickle.dumps(first))
    assert restored.themes(CORPUS) == themes


def test_unseen_article_and_tiny_corpus_fall_back():
    builder = ThemeBuilder(keywords=3).fit(CORPUS[:1])
    unseen = Article("u", "Volcano erupts near village", "Lava flowed towards homes.", "world")
    assert builder.theme(unseen) == "volcano erupts village"
    # Nothing to fit on: title words, then the category.
    empty = ThemeBuilder(keywords=3).fit([])
    assert empty.theme(Article("e", "The big match", "Text.", "sport")) == "big match sport"
    assert empty.themes([]) == []
