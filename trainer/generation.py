"""The one generation code path: prompt building, decoding, stopping, post-processing.

Evaluation, the ``headline generate`` CLI and the API service all call
``Generator.generate``. It runs its own batched decoding loop rather than
``model.generate`` because each row of a batch needs its own settings and its
own random generator: a request batched with others must get exactly the
headline it would get alone under the same seed.

Shapes: B = rows (prompts x num_return), T = prompt length after left padding,
V = vocabulary size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from config import Config, resolve_path
from config.schema import GenerationConfig
from trainer.errors import TrainerError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of one request; see the ``generation`` section of config.yml.

    ``num_return > 1`` with greedy decoding would return identical copies, so it
    samples instead, with seed 0 when none is given (so the answer stays
    repeatable and cacheable).
    """

    max_new_tokens: int = 24
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.2
    num_return: int = 1
    seed: int | None = None

    @classmethod
    def from_config(cls, gen_cfg: GenerationConfig, **overrides) -> GenerationSettings:
        values = {f.name: getattr(gen_cfg, f.name) for f in fields(cls) if hasattr(gen_cfg, f.name)}
        values["num_return"] = gen_cfg.num_headlines
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def effective(self) -> GenerationSettings:
        if self.num_return > 1 and not self.do_sample:
            return replace(self, do_sample=True, seed=0 if self.seed is None else self.seed)
        return self

    @property
    def deterministic(self) -> bool:
        """Same input, same output: greedy, or sampling with a fixed seed."""
        eff = self.effective()
        return not eff.do_sample or eff.seed is not None


@dataclass
class Generation:
    """The result for one prompt: ``num_return`` headlines and token counts."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    # Per headline: True when it ended by itself (EOS or end of line), False when cut at max_new_tokens.
    finished: list[bool] = field(default_factory=list)


def postprocess(text: str) -> str:
    """One headline from raw model text: first line, trimmed, outer quotes removed."""
    line = text.strip().split("\n", 1)[0]
    line = " ".join(line.split())
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return line


def _is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file() and (path / "model" / "config.json").is_file()


class Generator:
    """A loaded model + tokenizer that turns prompts into headlines."""

    def __init__(self, model, tokenizer, cfg: Config, *, name: str, run: str | None = None,
                 version: str = "unknown", eval_scores: dict | None = None):

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.info = {"name": name, "run": run, "version": version}
        self.eval_scores = eval_scores or {}
        self.device = next(model.parameters()).device
        self._eos = tokenizer.eos_token_id
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos
        # Tokens whose text holds a newline end a headline just like EOS does.
        vocab = len(tokenizer)
        self._stop_ids = frozenset(i for i in range(vocab) if "\n" in tokenizer.decode([i])) | {self._eos}
        # Only the last position's logits are used: asking for just those skips the prefill's
        # (B, T, V) LM-head product, as large as the rest of a step for a 135M model.
        import inspect

        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    # -- loading --------------------------------------------------------------
    @classmethod
    def load(cls, ref: str, cfg: Config) -> Generator:
        """Load a run folder (``runs/latest`` included) or any ``model.name`` value."""
        from trainer.modeling import load_model_and_tokenizer, resolve_model_source, weights_version

        path = resolve_path(ref)
        if path.exists() and _is_run_dir(path.resolve()):
            run_dir = path.resolve()
            meta = json.loads((run_dir / "run.json").read_text())
            model, tokenizer = load_model_and_tokenizer(str(run_dir / "model"), cfg.model)
            scores = {}
            if (run_dir / "eval.json").is_file():
                scores = json.loads((run_dir / "eval.json").read_text())
            version = meta.get("version") or weights_version(run_dir / "model")
            return cls(model, tokenizer, cfg, name=meta.get("base_model", "unknown"),
                       run=meta.get("run_id", run_dir.name), version=version, eval_scores=scores)
        if path.exists() and path.is_dir() and (path / "run.json").exists():
            raise TrainerError(f"{ref}: run has no final model yet (unfinished or cancelled run)")
        if ref.rstrip("/").endswith("latest") and not path.exists():
            raise TrainerError(
                f"{ref}: no finished run yet; train one with `headline train` "
                "or point service.model / --run at a base model"
            )
        source = resolve_model_source(ref, cfg.model)
        model, tokenizer = load_model_and_tokenizer(ref, cfg.model)
        version = weights_version(source) if Path(source).is_dir() else "hub"
        return cls(model, tokenizer, cfg, name=ref, run=None, version=version)

    # -- prompts --------------------------------------------------------------
    def prompt(self, *, theme: str | None = None, article: str | None = None,
               category: str | None = None) -> str:
        """The prompt for a theme or an article, built exactly as in training."""
        from trainer.dataset import format_prompt, truncate_article

        if (theme is None) == (article is None):
            raise TrainerError("give exactly one of theme or article")
        if article is not None:
            article = truncate_article(self.tokenizer, article, self.cfg.prompt.article_max_tokens)
            return format_prompt(self.cfg.prompt, "article", article=article, category=category)
        return format_prompt(self.cfg.prompt, "theme", theme=theme, category=category)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    # -- decoding -------------------------------------------------------------
    def generate(self, prompts: Sequence[str],
                 settings: GenerationSettings | Sequence[GenerationSettings]) -> list[Generation]:
        """Headlines for each prompt; ``settings`` is one for all or one per prompt."""
        import torch

        if isinstance(settings, GenerationSettings):
            settings = [settings] * len(prompts)
        if len(settings) != len(prompts):
            raise ValueError("settings must be one per prompt")
        if not prompts:
            return []
        settings = [s.effective() for s in settings]
        # One row per returned headline; row r belongs to prompt owner[r].
        rows, owner, row_settings, gens = [], [], [], []
        encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for i, (ids, s) in enumerate(zip(encoded, settings)):
            for k in range(s.num_return):
                rows.append(ids)
                owner.append(i)
                row_settings.append(s)
                g = None
                if s.do_sample:
                    g = torch.Generator(device="cpu")
                    g.manual_seed((s.seed + k) if s.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
                gens.append(g)
        with torch.inference_mode():
            out_ids, finished = self._decode(rows, row_settings, gens)
        results = []
        for i, ids in enumerate(encoded):
            mine = [r for r in range(len(rows)) if owner[r] == i]
            texts = [postprocess(self.tokenizer.decode(out_ids[r], skip_special_tokens=True)) for r in mine]
            results.append(Generation(
                texts=texts,
                prompt_tokens=len(ids),
                completion_tokens=sum(len(out_ids[r]) for r in mine),
                finished=[finished[r] for r in mine],
            ))
        return results

    def _decode(self, rows: list[list[int]], settings: list[GenerationSettings],
                gens: list[torch.Generator | None]) -> tuple[list[list[int]], list[bool]]:
        import torch

        B = len(rows)
        T = max(len(r) for r in rows)
        dev = self.device
        # Left padding keeps every row's last prompt token at position T-1.
        input_ids = torch.full((B, T), self._pad, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        for b, ids in enumerate(rows):
            input_ids[b, T - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[b, T - len(ids):] = 1
        input_ids, attention = input_ids.to(dev), attention.to(dev)
        penalty = torch.tensor([s.repetition_penalty for s in settings], device=dev).unsqueeze(1)
        temperature = torch.tensor([s.temperature for s in settings], device=dev).unsqueeze(1)
        vocab = self.model.config.vocab_size
        # seen[b, v]: token v occurs in row b's prompt or output (for the repetition penalty).
        seen = torch.zeros((B, vocab), dtype=torch.bool, device=dev)
        seen.scatter_(1, input_ids.clamp(max=vocab - 1), attention.bool())
        stop_ids = self._stop_ids
        outs: list[list[int]] = [[] for _ in range(B)]
        ended = [False] * B  # stopped by EOS/newline rather than by max_new_tokens
        # active[i]: the original row of batch row i. Finished rows leave the batch (and
        # the KV cache) at once, so a long row no longer drags short ones through every step.
        active = list(range(B))
        past = None
        step_ids = input_ids
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        keep_logits = {"logits_to_keep": 1} if self._logits_to_keep else {}
        for _ in range(max(s.max_new_tokens for s in settings)):
            result = self.model(input_ids=step_ids, attention_mask=attention, position_ids=positions,
                                cache=past, use_cache=True, **keep_logits)
            past = result.cache
            logits = result.logits[:, -1, :vocab].float()  # (b, V), b = rows still active
            logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
            next_ids = logits.argmax(dim=-1)
            for i, row in enumerate(active):
                if settings[row].do_sample:
                    next_ids[i] = self._sample(logits[i] / temperature[i], settings[row], gens[row])
            keep = []
            for i, (row, token) in enumerate(zip(active, next_ids.tolist())):
                if token in stop_ids:
                    ended[row] = True
                    continue
                outs[row].append(token)
                if len(outs[row]) < settings[row].max_new_tokens:
                    keep.append(i)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=dev)
                past.batch_select_indices(idx)
                attention, positions, seen = attention[idx], positions[idx], seen[idx]
                penalty, temperature, next_ids = penalty[idx], temperature[idx], next_ids[idx]
                active = [active[i] for i in keep]
            seen[torch.arange(len(active), device=dev), next_ids] = True
            step_ids = next_ids.unsqueeze(1)
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
        return outs, ended

    @staticmethod
    def _sample(logits: torch.Tensor, s: GenerationSettings, gen: torch.Generator) -> torch.Tensor:
        """Top-k, then nucleus (top-p) filtering, then one draw from this row's generator."""
        import torch

        if s.top_k > 0 and s.top_k < logits.numel():
            kth = torch.topk(logits, s.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Drop a token when the tokens ranked above it already reach top_p.
            drop = (sorted_p.cumsum(0) - sorted_p) >= s.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=gen)[0].to(logits.device)
