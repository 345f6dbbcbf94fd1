"""Load news articles from a file, a folder or a Hugging Face dataset, and clean them.

Every row that is read is either kept or dropped with a reason; the ``DataReport``
says which and how many (``rows_read == rows_kept + sum(dropped.values())``), and is
written with each run. Files are read as bytes so that bytes that are not UTF-8 are
seen per row and handled as ``data.encoding_errors`` says (repair or drop).

This module imports neither torch nor transformers; ``datasets`` only inside the
Hugging Face loader, so that ``headline data preview`` starts quickly.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from config import resolve_path
from config.schema import DataConfig, SplitConfig
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

# Dropped-row examples kept in the report: enough to see a pattern, small enough to read.
MAX_DROPPED_EXAMPLES = 50
# Undecodable bytes survive decoding as lone surrogates (U+DC80-U+DCFF), see _read_text.
_SURROGATES = re.compile("[\udc80-\udcff]")
_WHITESPACE = re.compile(r"\s+")
# HTML character references left in scraped text ("&#163;1.8m fine"); only full ones with ';'.
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class DataError(TrainerError):
    """The data cannot be used: missing file, missing column, nothing left after cleaning."""


@dataclass(frozen=True)
class Article:
    id: str
    title: str
    text: str
    category: str | None


@dataclass
class DataReport:
    """What loading and cleaning did, row by row counted."""

    source: str
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    dropped_examples: list[dict[str, Any]] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, where: str, row: int, title: str = "") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if len(self.dropped_examples) < MAX_DROPPED_EXAMPLES:
            self.dropped_examples.append({"row": row, "where": where, "reason": reason, "title": title[:60]})

    def repair(self, what: str, count: int = 1) -> None:
        self.repaired[what] = self.repaired.get(what, 0) + count

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            "# Data report",
            "",
            f"- Source: `{self.source}` ({self.format})",
            f"- Rows read: {self.rows_read}",
            f"- Rows kept: {self.rows_kept}",
            f"- Rows dropped: {sum(self.dropped.values())}",
            "",
        ]
        sections = [
            ("Dropped", "Reason", self.dropped),
            ("Repaired", "What", self.repaired),
            ("Categories", "Category", self.categories),
            ("Splits", "Split", self.splits),
        ]
        for title, label, counts in sections:
            if counts:
                lines += [f"## {title}", "", f"| {label} | Count |", "|---|---:|"]
                lines += [f"| {key} | {value} |" for key, value in counts.items()]
                lines.append("")
        if self.dropped_examples:
            lines += ["## Dropped rows (first examples)", "", "| Where | Reason | Title |", "|---|---|---|"]
            for ex in self.dropped_examples:
                title = ex["title"].replace("|", "\\|")
                lines.append(f"| {ex['where']} | {ex['reason']} | {title} |")
            lines.append("")
        return "\n".join(lines)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data_report.json").write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (folder / "data_report.md").write_text(self.to_markdown(), encoding="utf-8")


@dataclass
class _Row:
    """One record as read, before mapping: ``values`` is None when it could not be parsed."""

    number: int  # 1-based row number among the records of the source
    where: str  # for messages: "line 12", "row 3", "business/001.txt"
    values: dict[str, Any] | None


@dataclass
class _Source:
    columns: list[str]
    rows: list[_Row]
    # Folders have no column mapping: the title, text and category come from the layout.
    mapped: bool = True


# -- reading ------------------------------------------------------------------------------


def resolve_format(data_cfg: DataConfig) -> str:
    """The loader to use: data.format, or for "auto" the file extension or folder."""
    if data_cfg.format != "auto":
        return data_cfg.format
    path = resolve_path(data_cfg.source)
    if path.is_dir():
        return "folder"
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if not path.exists():
        # "auto" never guesses a Hugging Face id: a typo in a path would turn into a hub error.
        hint = " (for a Hugging Face dataset set data.format: hf)" if fmt is None else ""
        raise DataError(f"data.source: {path} does not exist{hint}")
    if fmt is None:
        raise DataError(
            f"data.source: cannot tell the format of {path} from its extension "
            f"(known: {', '.join(sorted(_EXTENSIONS))}); set data.format"
        )
    return fmt


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"data.source: {path} does not exist")
    if path.is_dir():
        raise DataError(f"data.source: {path} is a folder; set data.format: folder (or auto)")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"data.source: {path} is empty")
    return data


def _read_text(data: bytes) -> str:
    # surrogateescape keeps each undecodable byte as a lone surrogate, so that the decision
    # to repair or drop is taken per row, after the row is known (see _clean_value).
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def _read_jsonl(path: Path) -> _Source:
    text = _read_text(_read_bytes(path))
    rows: list[_Row] = []
    columns: dict[str, None] = {}
    number = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number += 1
        try:
            values = json.loads(line)
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, dict):
            values = None
        else:
            columns.update(dict.fromkeys(values))
        rows.append(_Row(number, f"line {line_no}", values))
    return _Source(list(columns), rows)


def _read_csv(path: Path) -> _Source:
    text = _read_text(_read_bytes(path))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        rows = []
        for number, record in enumerate(reader, start=1):
            if not any(cell.strip() for cell in record):
                continue
            # A short record leaves its last columns missing; extra cells are ignored.
            rows.append(_Row(number, f"line {reader.line_num}", dict(zip(header, record))))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from exc
    return _Source([h for h in header], rows)


def _read_parquet(path: Path) -> _Source:
    import pandas as pd

    _read_bytes(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    columns = [str(c) for c in frame.columns]
    rows = [
        _Row(i, f"row {i}", dict(zip(columns, record)))
        for i, record in enumerate(frame.itertuples(index=False, name=None), start=1)
    ]
    return _Source(columns, rows)


def _read_folder(path: Path) -> _Source:
    if not path.is_dir():
        raise DataError(f"data.source: {path} is not a folder")
    subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # With category subfolders (bbc/<category>/NNN.txt), files at the top are not articles
    # (the BBC archive keeps its README.TXT there).
    files = sorted(
        p
        for p in (path.rglob("*") if subfolders else path.iterdir())
        if p.is_file()
        and p.suffix.lower() == ".txt"
        and not p.name.startswith(".")
        and (not subfolders or p.parent != path)
    )
    if not files:
        raise DataError(f"data.source: {path} holds no .txt article files")
    rows = []
    for number, file in enumerate(files, start=1):
        rel = file.relative_to(path)
        head, _, body = _read_text(file.read_bytes()).lstrip().partition("\n")
        category = file.parent.name if file.parent != path else None
        stem = rel.with_suffix("").as_posix()
        values = {"id": stem, "title": head, "text": body, "category": category}
        rows.append(_Row(number, rel.as_posix(), values))
    return _Source(["title", "text", "category"], rows, mapped=False)


def _read_hf(data_cfg: DataConfig) -> _Source:
    import datasets  # heavy: only when a hub dataset is asked for

    try:
        ds = datasets.load_dataset(data_cfg.source, split=data_cfg.hf_split)
    except Exception as exc:  # network, missing dataset, missing split: all user-fixable
        raise DataError(
            f"data.source: cannot load Hugging Face dataset {data_cfg.source!r} "
            f"split {data_cfg.hf_split!r}: {exc}"
        ) from exc
    columns = list(ds.column_names)
    rows = [_Row(i, f"row {i}", dict(record)) for i, record in enumerate(ds, start=1)]
    return _Source(columns, rows)


def _read_source(data_cfg: DataConfig) -> tuple[_Source, str]:
    fmt = resolve_format(data_cfg)
    if fmt == "hf":
        return _read_hf(data_cfg), fmt
    path = resolve_path(data_cfg.source)
    readers = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "folder": _read_folder}
    source = readers[fmt](path)
    if not source.rows:
        raise DataError(f"data.source: {path} has no rows")
    return source, fmt


def _check_columns(source: _Source, data_cfg: DataConfig, where: str) -> None:
    if not source.mapped:
        return
    cols = data_cfg.columns
    wanted = [("title", cols.title), ("text", cols.text)]
    if cols.category is not None:
        wanted.append(("category", cols.category))
    for key, name in wanted:
        if name not in source.columns:
            available = ", ".join(source.columns) or "none"
            hint = " (set it to null if the data has no category)" if key == "category" else ""
            raise DataError(
                f"{where}: column {name!r} (data.columns.{key}) not found{hint}; "
                f"available columns: {available}"
            )


# -- cleaning -----------------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    """A cell as a string; None for missing values (None, NaN)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


def _normalize(text: str) -> str:
    # One line: the prompt templates put the article on one "Article:" line.
    return _WHITESPACE.sub(" ", text).strip()


def _mapped(row: _Row, source: _Source, data_cfg: DataConfig) -> dict[str, str | None]:
    values = row.values or {}
    if not source.mapped:
        return {k: _as_text(values.get(k)) for k in ("title", "text", "category")}
    cols = data_cfg.columns
    return {
        "title": _as_text(values.get(cols.title)),
        "text": _as_text(values.get(cols.text)),
        "category": _as_text(values.get(cols.category)) if cols.category else None,
    }


def _article_id(values: dict[str, Any] | None, title: str, text: str) -> str:
    # The source's own id when it has one; otherwise a hash of the content, so that the
    # split of an article does not depend on where it sits in the file.
    given = _as_text((values or {}).get("id"))
    if given and given.strip():
        return given.strip()
    return hashlib.sha256(f"{title}\n{text}".encode("utf-8", "replace")).hexdigest()[:16]


def load_articles(data_cfg: DataConfig) -> tuple[list[Article], DataReport]:
    """Read data.source, clean it as data.* says, and report every row kept or dropped."""
    source, fmt = _read_source(data_cfg)
    where_src = data_cfg.source
    if any(row.values is not None for row in source.rows):
        # (With no parsable row there are no columns to check; the error below says why.)
        _check_columns(source, data_cfg, where_src)
    report = DataReport(source=data_cfg.source, format=fmt)

    kept: list[Article] = []
    seen_content: set[str] = set()
    seen_ids: Counter[str] = Counter()
    for row in source.rows:
        report.rows_read += 1
        if row.values is None:
            report.drop("malformed_json", row.where, row.number)
            continue
        fields = _mapped(row, source, data_cfg)
        undecodable = sum(len(_SURROGATES.findall(v)) for v in fields.values() if v)
        title_raw = fields["title"] or ""
        if undecodable:
            if data_cfg.encoding_errors == "drop":
                report.drop("undecodable_bytes", row.where, row.number, _SURROGATES.sub("\ufffd", title_raw))
                continue
            report.repair("undecodable_bytes", undecodable)
            report.repair("rows_with_undecodable_bytes")
            fields = {k: _SURROGATES.sub("\ufffd", v) if v else v for k, v in fields.items()}
        entities = sum(len(_ENTITY.findall(v)) for v in fields.values() if v)
        if entities:
            report.repair("html_entities", entities)
            fields = {
                k: _ENTITY.sub(lambda m: html.unescape(m.group()), v) if v else v for k, v in fields.items()
            }
        title = _normalize(fields["title"] or "")
        text = _normalize(fields["text"] or "")
        category = _normalize(fields["category"] or "") or None
        reason = _reject_reason(title, text, data_cfg)
        if reason is None:
            key = f"{title.lower()}\n{text.lower()}"
            if key in seen_content:
                reason = "duplicate"
            seen_content.add(key)
        if reason is not None:
            report.drop(reason, row.where, row.number, title)
            continue
        art_id = _article_id(row.values, title, text)
        seen_ids[art_id] += 1
        if seen_ids[art_id] > 1:  # same id, different content: keep both, ids unique
            art_id = f"{art_id}~{seen_ids[art_id]}"
        kept.append(Article(id=art_id, title=title, text=text, category=category))

    if data_cfg.max_examples is not None and len(kept) > data_cfg.max_examples:
        kept = _sample(kept, data_cfg.max_examples, data_cfg.seed, report)
    if not kept:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.dropped.items())
        raise DataError(
            f"{where_src}: no usable rows left after cleaning ({report.rows_read} read; dropped {reasons})"
        )
    report.rows_kept = len(kept)
    if report.dropped:
        # One line, not one per row: the report lists the rows (first examples).
        log.warning(
            "%s: kept %d of %d rows; dropped %s", where_src, len(kept), report.rows_read, report.dropped
        )
    report.categories = dict(sorted(Counter(a.category or "(none)" for a in kept).items()))
    return kept, report


def _reject_reason(title: str, text: str, data_cfg: DataConfig) -> str | None:
    if not title:
        return "missing_title"
    if not text:
        return "missing_text"
    if len(text) < data_cfg.min_text_chars:
        return "text_too_short"
    if len(text) > data_cfg.max_text_chars:
        return "text_too_long"
    words = len(title.split())
    if words < data_cfg.min_title_words:
        return "title_too_short"
    if words > data_cfg.max_title_words:
        return "title_too_long"
    return None


def _sample(articles: list[Article], n: int, seed: int, report: DataReport) -> list[Article]:
    """n articles chosen by a seeded shuffle (so categories keep their shares on average)."""
    order = sorted(range(len(articles)), key=lambda i: articles[i].id)
    random.Random(seed).shuffle(order)
    chosen = set(order[:n])
    report.dropped["over_max_examples"] = len(articles) - n
    return [a for i, a in enumerate(articles) if i in chosen]


# -- preview and split --------------------------------------------------------------------


def preview(data_cfg: DataConfig, rows: int = 5, max_chars: int = 300) -> dict[str, Any]:
    """The source's columns and its first rows as mapped now, for the wizard.

    No cleaning and no column check: the point is to let the user fix the mapping.
    A mapped column that does not exist shows as null. Texts are cut to max_chars.
    """
    source, _ = _read_source(data_cfg)
    out = []
    for row in source.rows:
        if len(out) >= rows:
            break
        if row.values is None:
            continue
        fields = _mapped(row, source, data_cfg)
        clean = {}
        for key, value in fields.items():
            if value is not None:
                value = _normalize(_SURROGATES.sub("\ufffd", value))
                if len(value) > max_chars:
                    value = value[:max_chars].rstrip() + "…"
            clean[key] = value
        out.append(clean)
    return {"columns": source.columns, "rows": out}


def split_articles(articles: list[Article], split_cfg: SplitConfig, seed: int) -> dict[str, list[Article]]:
    """Train / validation / test, stratified by category and fixed by seed.

    Articles are sorted by id first, so the split depends only on the set of articles.
    A category with at least 3 articles gets at least one in validation and in test.
    """
    strata: dict[str, list[Article]] = {}
    for article in sorted(articles, key=lambda a: a.id):
        strata.setdefault(article.category or "", []).append(article)
    splits: dict[str, list[Article]] = {"train": [], "validation": [], "test": []}
    for category in sorted(strata):
        items = strata[category]
        # A string seed is hashed with SHA-512 by random: stable across runs and platforms.
        random.Random(f"{seed}:{category}").shuffle(items)
        n = len(items)
        n_val = round(n * split_cfg.validation)
        n_test = round(n * split_cfg.test)
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        else:
            n_val = n_test = 0
        splits["validation"] += items[:n_val]
        splits["test"] += items[n_val : n_val + n_test]
        splits["train"] += items[n_val + n_test :]
    return {name: sorted(part, key=lambda a: a.id) for name, part in splits.items()}
