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


def test_counters_are_read_off_the_service_metrics(make_app):
    """The cache-miss rounds' counters come from the instances' /metrics: checked on the real text."""
    from bench.serve import COUNTERS, read_counters

    client = make_app(**{"cache.enabled": "false"}).test_client()
    before = read_counters(client.get("/metrics").get_data(as_text=True))
    r = client.post("/v1/headlines", json={"theme": "bench counters", "max_new_tokens": 5})
    assert r.status_code == 200
    after = read_counters(client.get("/metrics").get_data(as_text=True))
    delta = {key: after[key] - before[key] for key in COUNTERS}
    assert delta["tokens"] == r.get_json()["usage"]["completion_tokens"] > 0
    assert delta["batch_steps"] >= 1 and delta["batch_sum"] == delta["batch_steps"]  # one request in each step
    assert delta["refill_filled"] == delta["refill_expired"] == delta["refill_seconds"] == 0  # nobody else decoded


def test_counters_sum_labelled_lines_and_take_exact_ones():
    from bench.serve import read_counters

    text = "\n".join([
        "# HELP headline_refill_wait_seconds ...",
        'headline_refill_wait_seconds_count{outcome="filled"} 3.0',
        'headline_refill_wait_seconds_count{outcome="expired"} 1.0',
        'headline_refill_wait_seconds_sum{outcome="filled"} 0.012',
        'headline_refill_wait_seconds_sum{outcome="expired"} 0.01',
        "headline_batch_size_sum 12.0",
        "headline_batch_size_count 4.0",
    ])
    got = read_counters(text)
    assert got["refill_filled"] == 3 and got["refill_expired"] == 1
    assert abs(got["refill_seconds"] - 0.022) < 1e-12 and got["batch_sum"] == 12 and got["batch_steps"] == 4
