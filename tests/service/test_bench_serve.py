"""bench/serve.py's cache-miss requests: themes as users send them, distinct within a round."""

from __future__ import annotations

from bench.serve import theme_source


def test_sample_themes_are_distinct_within_a_round_and_the_same_for_both_sides():
    themes = theme_source("sample")
    round_ = [themes("2-8", i) for i in range(64)]  # one concurrency-8 round (--miss-requests)
    assert len(set(round_)) == 64  # never two identical requests in flight (single-flight would merge them)
    assert round_ == [themes("2-8", i) for i in range(64)]  # both sides of a round: the same work
    assert round_[:8] != [themes("3-8", i) for i in range(8)]  # each round its own stretch
    assert all(1 <= len(t.split()) <= 4 for t in round_)  # a few words, as for training


def test_numbered_themes_are_the_earlier_bench_ones():
    assert theme_source("numbered")("0-8", 12) == "market news 0-8 12"
