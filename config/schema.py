"""Typed schema of config.yml.

Every section is a frozen pydantic model that rejects unknown keys. The field
names are the YAML keys, the attribute names, the CLI ``--set a.b=c`` paths and
the wizard's field names. Ranges live here (``ge``/``le``), cross-field rules in
``model_validator``s that raise with the key path in the message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PACKAGED_MODELS = ("smollm2-135m-instruct", "gemma3-270m")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LoraConfig(Section):
    r: int = Field(8, ge=1, le=256, description="LoRA rank")
    alpha: int = Field(16, ge=1, le=1024, description="LoRA scaling numerator")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on LoRA inputs")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names that receive adapters",
    )


class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", min_length=1)
    revision: str = Field("main", min_length=1)
    cache_dir: str = Field(".cache/models", min_length=1)
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _lora_only_with_lora(self) -> ModelConfig:
        if self.method == "lora" and self.lora is None:
            raise ValueError("model.lora: required when model.method is 'lora'")
        if self.method != "lora" and self.lora is not None:
            raise ValueError(
                "model.lora: only allowed when model.method is 'lora' "
                f"(model.method is {self.method!r}; remove the lora section or set method: lora)"
            )
        return self


class ColumnsConfig(Section):
    title: str = Field("title", min_length=1)
    text: str = Field("text", min_length=1)
    category: str | None = "category"


class SplitConfig(Section):
    validation: float = Field(0.1, gt=0.0, lt=0.5)
    test: float = Field(0.1, gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.validation + self.test >= 0.6:
            raise ValueError(
                "data.split: validation + test must be < 0.6 "
                f"(got {self.validation} + {self.test})"
            )
        return self


class DataConfig(Section):
    source: str = Field("data/sample_news.jsonl", min_length=1)
    format: Literal["auto", "jsonl", "csv", "parquet", "folder", "hf"] = "auto"
    hf_split: str = Field("train", min_length=1)
    columns: ColumnsConfig = ColumnsConfig()
    encoding_errors: Literal["repair", "drop"] = "repair"
    min_title_words: int = Field(2, ge=1, le=50)
    max_title_words: int = Field(20, ge=1, le=100)
    min_text_chars: int = Field(40, ge=0)
    max_text_chars: int = Field(20000, ge=100)
    max_examples: int | None = Field(None, ge=10)
    split: SplitConfig = SplitConfig()
    seed: int = Field(42, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> DataConfig:
        if self.min_title_words > self.max_title_words:
            raise ValueError(
                f"data.min_title_words: must be <= data.max_title_words "
                f"({self.min_title_words} > {self.max_title_words})"
            )
        if self.min_text_chars >= self.max_text_chars:
            raise ValueError(
                f"data.min_text_chars: must be < data.max_text_chars "
                f"({self.min_text_chars} >= {self.max_text_chars})"
            )
        return self


class PromptConfig(Section):
    tasks: list[Literal["theme", "article"]] = Field(
        default_factory=lambda: ["theme", "article"], min_length=1
    )
    theme_template: str = "Theme: {theme}\nHeadline:"
    theme_category_template: str = "Category: {category}\nTheme: {theme}\nHeadline:"
    article_template: str = "Article: {article}\nHeadline:"
    article_category_template: str = "Category: {category}\nArticle: {article}\nHeadline:"
    category_rate: float = Field(0.5, ge=0.0, le=1.0)
    theme_keywords: int = Field(3, ge=1, le=8)
    article_max_tokens: int = Field(192, ge=16, le=2048)

    @model_validator(mode="after")
    def _placeholders(self) -> PromptConfig:
        needs = {
            "theme_template": ("{theme}",),
            "theme_category_template": ("{theme}", "{category}"),
            "article_template": ("{article}",),
            "article_category_template": ("{article}", "{category}"),
        }
        for key, fields in needs.items():
            value = getattr(self, key)
            for field in fields:
                if field not in value:
                    raise ValueError(f"prompt.{key}: must contain {field} (got {value!r})")
        return self


class TrainConfig(Section):
    output_dir: str = Field("runs", min_length=1)
    run_name: str = Field("headline", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    epochs: float = Field(2.0, gt=0.0, le=100.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1, le=512)
    grad_accum: int = Field(1, ge=1, le=256)
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(10, ge=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_seq_len: int = Field(256, ge=16, le=8192)
    group_by_length: bool = True
    seed: int = Field(42, ge=0)
    eval_steps: int = Field(25, ge=1)
    save_steps: int = Field(25, ge=1)
    logging_steps: int = Field(5, ge=1)
    early_stopping_patience: int | None = Field(3, ge=1)
    save_total_limit: int = Field(2, ge=1)
    num_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _steps(self) -> TrainConfig:
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(
                f"train.warmup_steps: must be <= train.max_steps "
                f"({self.warmup_steps} > {self.max_steps})"
            )
        if self.save_steps % self.eval_steps != 0 and self.early_stopping_patience:
            raise ValueError(
                "train.save_steps: must be a multiple of train.eval_steps when early stopping "
                f"is on, so the best checkpoint is always saved ({self.save_steps} vs {self.eval_steps})"
            )
        return self


class EvalConfig(Section):
    max_examples: int | None = Field(100, ge=1)
    batch_size: int = Field(16, ge=1, le=512)
    compare_base: bool = True
    examples_shown: int = Field(10, ge=0, le=100)
    runaway_words: int = Field(20, ge=5, le=200)


class GenerationConfig(Section):
    max_new_tokens: int = Field(24, ge=1, le=512)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0.0, le=5.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, le=1000)
    repetition_penalty: float = Field(1.2, ge=1.0, le=5.0)
    num_headlines: int = Field(1, ge=1, le=10)
    seed: int | None = Field(None, ge=0)


class CacheConfig(Section):
    enabled: bool = True
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    ttl_seconds: int = Field(86400, ge=1, le=30 * 86400)
    lock_timeout_ms: int = Field(10000, ge=100, le=600000)
    socket_timeout_ms: int = Field(100, ge=5, le=10000)
    retry_after_s: float = Field(5.0, ge=0.0, le=300.0)


class BatchingConfig(Section):
    enabled: bool = True
    window_ms: float = Field(0.0, ge=0.0, le=1000.0)
    refill_ms: float = Field(10.0, ge=0.0, le=1000.0)
    max_batch_size: int = Field(8, ge=1, le=128)


class AuthConfig(Section):
    enabled: bool = False
    keys_file: str = Field(".secrets/api_keys.json", min_length=1)
    protect_metrics: bool = True
    protect_docs: bool = False


class RateLimitConfig(Section):
    enabled: bool = True
    requests_per_minute: int = Field(120, ge=1)
    tokens_per_minute: int = Field(20000, ge=1)


class ServiceConfig(Section):
    model: str = Field("runs/latest", min_length=1)
    max_prompt_chars: int = Field(500, ge=1, le=100000)
    max_article_chars: int = Field(20000, ge=1, le=1000000)
    max_input_tokens: int = Field(512, ge=8, le=8192)
    max_new_tokens_limit: int = Field(64, ge=1, le=1024)
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    max_concurrency: int = Field(16, ge=1, le=1024)
    torch_threads: int = Field(1, ge=1, le=256)
    weights: Literal["float32", "float16", "int8"] = "float16"
    warmup: bool = True
    cache: CacheConfig = CacheConfig()
    batching: BatchingConfig = BatchingConfig()
    auth: AuthConfig = AuthConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()

    @model_validator(mode="after")
    def _article_fits(self) -> ServiceConfig:
        if self.max_prompt_chars > self.max_body_bytes:
            raise ValueError(
                "service.max_prompt_chars: must be <= service.max_body_bytes "
                f"({self.max_prompt_chars} > {self.max_body_bytes})"
            )
        return self


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    generation: GenerationConfig = GenerationConfig()
    service: ServiceConfig = ServiceConfig()
