"""config/: schema validation, overrides, comments and the byte-exact round trip."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from pydantic import ValidationError

from config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigDocument,
    ConfigError,
    load_config,
    parse_override,
)


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "config.yml"
    shutil.copy(DEFAULT_CONFIG_PATH, path)
    return path


def test_shipped_config_is_valid_and_equals_schema_defaults():
    cfg = load_config()
    assert isinstance(cfg, Config)
    # config.yml spells out every default, so the file and the schema cannot drift apart.
    assert cfg.model_dump() == Config().model_dump()


def test_every_key_in_config_yml_has_a_comment():
    doc = ConfigDocument.read(DEFAULT_CONFIG_PATH)

    def walk(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            yield path
            if isinstance(value, dict):
                yield from walk(value, path + ".")

    missing = [p for p in walk(doc.tree) if "." in p and not doc.comment(p)
               and not isinstance(doc.get(p), dict)]
    assert missing == []


def test_unchanged_round_trip_is_byte_identical(cfg_file):
    before = cfg_file.read_bytes()
    doc = ConfigDocument.read(cfg_file)
    doc.set("train.learning_rate", doc.get("train.learning_rate"))
    doc.save()
    assert cfg_file.read_bytes() == before


def test_changing_values_changes_only_those_lines(cfg_file):
    before = cfg_file.read_text().splitlines()
    doc = ConfigDocument.read(cfg_file)
    doc.set("train.learning_rate", 3e-5)
    doc.set("train.batch_size", 4)
    doc.set("prompt.theme_template", "Topic: {theme}\nHeadline:")
    doc.save()
    after = cfg_file.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after)
    assert [b.strip() for _, b in changed] == [
        'theme_template: "Topic: {theme}\\nHeadline:"',
        "batch_size: 4",
        "learning_rate: 3e-05",
    ]
    reloaded = load_config(cfg_file)
    assert reloaded.train.learning_rate == 3e-5
    assert reloaded.prompt.theme_template == "Topic: {theme}\nHeadline:"


def test_unknown_key_is_rejected_with_its_path(cfg_file):
    cfg_file.write_text(cfg_file.read_text().replace("  batch_size: 8", "  batch_size: 8\n  bacth_size: 4"))
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file)
    assert ("train.bacth_size", "unknown key") in err.value.errors


@pytest.mark.parametrize(
    "override, path, words",
    [
        ("train.learning_rate=-1", "train.learning_rate", "greater than 0"),
        ("train.batch_size=zero", "train.batch_size", "valid integer"),
        ("train.scheduler=steep", "train.scheduler", "'linear'"),
        ("generation.top_p=1.5", "generation.top_p", "less than or equal to 1"),
        ("data.split.validation=0.9", "data.split.validation", "less than 0.5"),
    ],
)
def test_bad_values_name_the_key_and_value(override, path, words):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    paths = [p for p, _ in err.value.errors]
    assert path in paths
    message = dict(err.value.errors)[path]
    assert words in message
    assert path in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.max_steps=5", "train.warmup_steps=10"])
    assert err.value.errors[0][0] == "train.warmup_steps"
    assert "10 > 5" in err.value.errors[0][1]

    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.lora={r: 4}"])
    assert err.value.errors[0][0] == "model.lora"
    assert "only allowed when model.method is 'lora'" in err.value.errors[0][1]

    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.method=lora"])
    assert err.value.errors[0][0] == "model.lora"

    cfg = load_config(overrides=["model.method=lora", "model.lora={r: 4, alpha: 8}"])
    assert cfg.model.lora.r == 4 and cfg.model.lora.target_modules

    with pytest.raises(ConfigError) as err:
        load_config(overrides=["prompt.theme_template=Headline for {topic}:"])
    assert err.value.errors[0][0] == "prompt.theme_template"


def test_overrides_use_the_yaml_names_and_types():
    cfg = load_config(overrides=["train.learning_rate=3e-5", "train.max_steps=null",
                                 "prompt.tasks=[theme]", "model.name=gpt2"])
    assert cfg.train.learning_rate == 3e-5
    assert cfg.train.max_steps is None
    assert cfg.prompt.tasks == ["theme"]
    assert cfg.model.name == "gpt2"
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.nope=1"])
    assert err.value.errors == [("train.nope", "unknown key")]
    with pytest.raises(ConfigError):
        parse_override("train.learning_rate")


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(ValidationError):
        cfg.train.learning_rate = 1.0  # type: ignore[misc]


def test_broken_yaml_reports_the_line(cfg_file):
    lines = cfg_file.read_text().splitlines()
    lines[20] = "  source: [unclosed"
    cfg_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        ConfigDocument.read(cfg_file)
    assert "line" in str(err.value) and str(cfg_file) in str(err.value)


def test_invalid_utf8_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_bytes(b"train:\n  run_name: caf\xe9\n")
    with pytest.raises(ConfigError, match="line 2: not valid UTF-8"):
        ConfigDocument.read(bad)
    with pytest.raises(ConfigError, match="file not found"):
        ConfigDocument.read(tmp_path / "missing.yml")


def test_save_refuses_invalid_values_and_leaves_file_intact(cfg_file):
    before = cfg_file.read_bytes()
    doc = ConfigDocument.read(cfg_file)
    doc.set("train.batch_size", 0)
    with pytest.raises(ConfigError):
        doc.save()
    assert cfg_file.read_bytes() == before
    assert [p.name for p in cfg_file.parent.iterdir()] == ["config.yml"]  # no temp files left


def test_comment_lookup():
    doc = ConfigDocument.read(DEFAULT_CONFIG_PATH)
    assert doc.comment("train.learning_rate") == "Peak learning rate of AdamW."
    assert doc.comment("model.name").startswith("Base model:")
    assert doc.comment("service.cache.enabled").startswith("Cache deterministic responses")


def test_config_package_imports_no_ml_libraries():
    code = "import sys, config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_adding_and_removing_a_section_keeps_the_blank_line_layout(cfg_file):
    before = cfg_file.read_text()
    doc = ConfigDocument.read(cfg_file)
    doc.set("model.method", "lora")
    doc.set("model.lora", {"r": 8, "alpha": 16})
    text = doc.dump()
    assert "  trust_remote_code: false\n  lora:\n    r: 8\n    alpha: 16\n\ndata:\n" in text
    doc.save()
    assert load_config(cfg_file).model.lora.r == 8
    doc.set("model.method", "full")
    doc.delete("model.lora")
    doc.save()
    assert cfg_file.read_text() == before


def test_cross_field_errors_do_not_dump_the_whole_section():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.max_steps=5", "train.warmup_steps=10"])
    assert "{" not in str(err.value)
