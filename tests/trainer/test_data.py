"""Loading, cleaning, reporting and splitting of articles (trainer.data), on real files."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from config.schema import DataConfig, SplitConfig
from trainer.data import Article, DataError, DataReport, load_articles, preview, split_articles

BBC = Path(__file__).resolve().parents[3] / "shared" / "data" / "bbc_news" / "bbc_news.jsonl"

BODY = "The council said the new plan would be published next week after a long consultation."


def rows(n: int, category: str = "business") -> list[dict]:
    return [
        {
            "id": f"{category}/{i:03d}",
            "title": f"Story number {i} about {category}",
            "text": f"{BODY} Item {i} of {category}.",
            "category": category,
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list, extra_lines: list[bytes] = ()) -> Path:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"".join(extra_lines)
    path.write_bytes(data)
    return path


def cfg(path: Path | str, **kw) -> DataConfig:
    return DataConfig(source=str(path), **kw)


def check_invariant(report: DataReport) -> None:
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())


# -- loaders on good input -----------------------------------------------------------------


def test_jsonl_loads_and_reports(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", rows(4) + rows(3, "sport"))
    articles, report = load_articles(cfg(path))
    assert len(articles) == 7
    assert articles[0] == Article(
        id="business/000",
        title="Story number 0 about business",
        text=f"{BODY} Item 0 of business.",
        category="business",
    )
    assert report.format == "jsonl"
    assert report.categories == {"business": 4, "sport": 3}
    assert report.rows_read == report.rows_kept == 7 and report.dropped == {}
    check_invariant(report)


def test_csv_with_column_mapping_and_quoted_newlines(tmp_path):
    path = tmp_path / "news.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["headline", "body", "section"])
        writer.writerow(["Bank holds   rates steady", f"{BODY}\n\nSecond paragraph here.", "business"])
        writer.writerow(["Team wins the cup", BODY, "sport"])
    columns = {"title": "headline", "text": "body", "category": "section"}
    articles, report = load_articles(cfg(path, columns=columns))
    assert [a.title for a in articles] == ["Bank holds rates steady", "Team wins the cup"]
    # Whitespace, paragraph breaks included, is normalised to single spaces.
    assert articles[0].text == f"{BODY} Second paragraph here."
    assert [a.category for a in articles] == ["business", "sport"]
    assert report.format == "csv" and report.rows_kept == 2


def test_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "news.parquet"
    pd.DataFrame(rows(5)).to_parquet(path)
    articles, report = load_articles(cfg(path))
    assert len(articles) == 5 and report.format == "parquet"
    assert articles[2].title == "Story number 2 about business"


def test_folder_layout_like_bbc(tmp_path):
    root = tmp_path / "bbc"
    for category in ("business", "tech"):
        (root / category).mkdir(parents=True)
        for i in range(1, 3):
            (root / category / f"{i:03d}.txt").write_text(
                f"{category.title()} headline number {i}\n\n{BODY}\nMore of story {i}.\n", encoding="utf-8"
            )
    (root / "README.TXT").write_text("About this archive\n\nNot an article at all, just notes.\n")
    (root / "tech" / "notes.md").write_text("ignored\n")
    articles, report = load_articles(cfg(root))
    assert report.format == "folder"
    assert [a.id for a in articles] == ["business/001", "business/002", "tech/001", "tech/002"]
    assert articles[0].title == "Business headline number 1"
    assert articles[0].text == f"{BODY} More of story 1."
    assert report.categories == {"business": 2, "tech": 2}


def test_folder_without_subfolders_has_no_category(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.txt").write_text(f"Flat headline number {i}\n{BODY}\n")
    articles, _ = load_articles(cfg(tmp_path, format="folder"))
    assert [a.category for a in articles] == [None, None]


def test_hf_loader_with_load_dataset_mocked(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict(
            {"headline": [r["title"] for r in rows(3)], "article": [r["text"] for r in rows(3)]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data_cfg = DataConfig(
        source="someone/news",
        format="hf",
        hf_split="validation",
        columns={"title": "headline", "text": "article", "category": None},
    )
    articles, report = load_articles(data_cfg)
    assert calls == [("someone/news", "validation")]
    assert len(articles) == 3 and articles[0].category is None
    assert report.format == "hf" and report.categories == {"(none)": 3}
    # No id column: ids come from the content, stable and unique.
    assert len({a.id for a in articles}) == 3


def test_hf_loader_error_is_a_data_error(monkeypatch):
    import datasets

    def broken(name, split):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError, match="someone/news.*hub unreachable"):
        load_articles(DataConfig(source="someone/news", format="hf"))


def test_data_module_does_not_import_torch():
    import subprocess

    code = "import sys, trainer.data; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- bad input -----------------------------------------------------------------------------


def test_missing_column_names_it_and_lists_available(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"headline": "A b c", "body": BODY}])
    with pytest.raises(DataError) as err:
        load_articles(cfg(path, columns={"title": "title", "text": "body", "category": None}))
    message = str(err.value)
    assert "'title'" in message and "data.columns.title" in message
    assert "headline, body" in message and str(path) in message


def test_missing_category_column_suggests_null(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"title": "A b c", "text": BODY}])
    with pytest.raises(DataError, match="'category'.*null"):
        load_articles(cfg(path))


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        load_articles(cfg(path))


def test_csv_with_header_only_has_no_rows(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("title,text,category\n")
    with pytest.raises(DataError, match="no rows"):
        load_articles(cfg(path))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_articles(cfg(tmp_path / "nope.jsonl"))
    odd = tmp_path / "news.xml"
    odd.write_text("<news/>")
    with pytest.raises(DataError, match="data.format"):
        load_articles(cfg(odd))


def bad_bytes_file(tmp_path) -> Path:
    good = rows(3)
    # Row 2's title holds a cp1252 pound sign (0xA3), row 3's text two stray bytes.
    lines = [
        json.dumps(good[0]).encode(),
        json.dumps(good[1]).encode().replace(b"Story number", b"Costs \xa3 story number"),
        json.dumps(good[2]).encode().replace(b"The council", b"The \xff\xfe council"),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_encoding_repaired_and_counted(tmp_path):
    articles, report = load_articles(cfg(bad_bytes_file(tmp_path)))
    assert len(articles) == 3
    assert report.repaired == {"undecodable_bytes": 3, "rows_with_undecodable_bytes": 2}
    assert articles[1].title.startswith("Costs \ufffd story")
    assert "\ufffd\ufffd council" in articles[2].text
    check_invariant(report)


def test_bad_encoding_dropped_and_counted(tmp_path):
    articles, report = load_articles(cfg(bad_bytes_file(tmp_path), encoding_errors="drop"))
    assert [a.id for a in articles] == ["business/000"]
    assert report.dropped == {"undecodable_bytes": 2}
    assert [e["where"] for e in report.dropped_examples] == ["line 2", "line 3"]
    check_invariant(report)


def test_bad_encoding_in_csv(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"title,text\nPrices rise \xa3 again," + BODY.encode() + b"\n")
    articles, report = load_articles(cfg(path, columns={"category": None}))
    assert articles[0].title == "Prices rise \ufffd again"
    assert report.repaired["undecodable_bytes"] == 1


def test_cleaning_drops_and_counts_every_reason(tmp_path):
    good = rows(3)
    records = good + [
        dict(good[0], id="dup"),  # exact duplicate (different id)
        dict(good[1], id="dup2", title=good[1]["title"].upper(), text="  " + good[1]["text"]),  # dup
        dict(good[0], id="t1", title=""),
        dict(good[0], id="t2", text=None),
        dict(good[0], id="t3", text="Too short."),
        dict(good[0], id="t4", text="x" * 500),
        dict(good[0], id="t5", title="Oneword"),
        dict(good[0], id="t6", title=" ".join(["word"] * 25)),
    ]
    path = write_jsonl(tmp_path / "a.jsonl", records, [b"{not json\n", b"[1, 2]\n"])
    articles, report = load_articles(cfg(path, max_text_chars=400))
    assert [a.id for a in articles] == ["business/000", "business/001", "business/002"]
    assert report.dropped == {
        "duplicate": 2,
        "missing_title": 1,
        "missing_text": 1,
        "text_too_short": 1,
        "text_too_long": 1,
        "title_too_short": 1,
        "title_too_long": 1,
        "malformed_json": 2,
    }
    assert report.rows_read == 13 and report.rows_kept == 3
    check_invariant(report)
    malformed = [e for e in report.dropped_examples if e["reason"] == "malformed_json"]
    assert [e["where"] for e in malformed] == ["line 12", "line 13"]


def test_only_malformed_lines_is_fatal(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("{broken\nalso broken\n")
    with pytest.raises(DataError, match="no usable rows.*malformed_json: 2"):
        load_articles(cfg(path, columns={"category": None}))


def test_html_entities_repaired(tmp_path):
    record = dict(rows(1)[0], title="&#163;5m fine for bank &amp; broker")
    _, report = load_articles(cfg(write_jsonl(tmp_path / "a.jsonl", [record])))
    articles, _ = load_articles(cfg(tmp_path / "a.jsonl"))
    assert articles[0].title == "£5m fine for bank & broker"
    assert report.repaired == {"html_entities": 2}


def test_max_examples_is_deterministic_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", rows(20) + rows(20, "sport"))
    first, report = load_articles(cfg(path, max_examples=10))
    again, _ = load_articles(cfg(path, max_examples=10))
    assert first == again and len(first) == 10
    assert report.dropped == {"over_max_examples": 30}
    assert set(report.categories) == {"business", "sport"}
    check_invariant(report)


def test_report_save_writes_json_and_markdown(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", rows(3) + rows(1)[:1], [b"oops\n"])
    _, report = load_articles(cfg(path))
    report.splits = {"train": 2, "validation": 0, "test": 1}
    report.save(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert saved == report.to_dict()
    assert saved["dropped"] == {"duplicate": 1, "malformed_json": 1}
    md = (tmp_path / "run" / "data_report.md").read_text()
    assert "| duplicate | 1 |" in md and "line 5" in md and "| train | 2 |" in md


# -- preview -------------------------------------------------------------------------------


def test_preview_lists_columns_and_maps_rows(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [dict(r, extra=1) for r in rows(8)])
    out = preview(cfg(path), rows=2)
    assert out["columns"] == ["id", "title", "text", "category", "extra"]
    assert out["rows"] == [
        {
            "title": "Story number 0 about business",
            "text": f"{BODY} Item 0 of business.",
            "category": "business",
        },
        {
            "title": "Story number 1 about business",
            "text": f"{BODY} Item 1 of business.",
            "category": "business",
        },
    ]
    # A wrong mapping is shown, not refused: the wizard uses preview to fix it.
    wrong = preview(cfg(path, columns={"title": "headline"}), rows=1)
    assert wrong["rows"][0]["title"] is None
    json.dumps(out)  # the CLI prints it as JSON


# -- split ---------------------------------------------------------------------------------


def make_articles() -> list[Article]:
    out = []
    for category, n in (("business", 40), ("sport", 25), ("tech", 5), (None, 10)):
        out += [Article(f"{category}-{i}", f"Title {i}", BODY, category) for i in range(n)]
    return out


def test_split_is_deterministic_stratified_and_disjoint():
    articles = make_articles()
    split_cfg = SplitConfig(validation=0.1, test=0.2)
    splits = split_articles(articles, split_cfg, seed=7)
    assert set(splits) == {"train", "validation", "test"}
    ids = [a.id for part in splits.values() for a in part]
    assert len(ids) == len(set(ids)) == len(articles)
    for category in ("business", "sport", "tech", None):
        for part in splits.values():
            assert any(a.category == category for a in part)
    counts = Counter(a.category for a in splits["test"])
    assert counts["business"] == 8 and counts["sport"] == 5
    # Same seed, shuffled input: same split. Another seed: another split.
    shuffled = list(reversed(articles))
    assert split_articles(shuffled, split_cfg, seed=7) == splits
    assert split_articles(articles, split_cfg, seed=8) != splits


def test_split_of_tiny_category_keeps_it_in_train():
    articles = [Article("a", "Title one", BODY, "rare"), Article("b", "Title two", BODY, "rare")]
    splits = split_articles(articles, SplitConfig(), seed=1)
    assert len(splits["train"]) == 2 and not splits["validation"] and not splits["test"]


# -- shipped and shared data ---------------------------------------------------------------


def test_sample_data_loads_clean(repo_root):
    articles, report = load_articles(cfg(repo_root / "data" / "sample_news.jsonl"))
    assert report.rows_read == report.rows_kept == len(articles) >= 160
    assert report.dropped == {} and report.repaired == {}
    assert len(report.categories) >= 5 and min(report.categories.values()) >= 32
    for article in articles:
        assert 3 <= len(article.title.split()) <= 10
        assert article.id.startswith(f"{article.category}/")


@pytest.mark.skipif(not BBC.exists(), reason="../shared/data/bbc_news is not beside the checkout")
def test_bbc_news_loads_with_a_sane_report():
    articles, report = load_articles(cfg(BBC))
    check_invariant(report)
    assert report.rows_read == 1927
    assert report.rows_kept >= 1900
    assert set(report.dropped) <= {"duplicate"}
    assert set(report.categories) == {"business", "entertainment", "politics", "sport", "tech"}
    splits = split_articles(articles, SplitConfig(), seed=42)
    assert all(len(part) > 150 for part in splits.values())
