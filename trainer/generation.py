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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def run_prompts(run_dir: Path, cfg: Config) -> Config:
    """``cfg`` with the prompt section the run was trained with (its saved config.yml).

    A model answers well only to the prompts it was fine-tuned on: a run is served with its own
    templates, whatever config.yml says today."""
    from config import ConfigDocument, ConfigError, validate
    from trainer.runs import CONFIG_YML

    saved = run_dir / CONFIG_YML
    if not saved.is_file():
        return cfg
    # A mapping of sections; unreadable YAML or another top level is a ConfigError naming the file.
    data = ConfigDocument.read(saved).plain()
    try:
        prompt = validate(data, str(saved)).prompt
    except ConfigError:
        # Keys added to or removed from other sections since the run was trained do not stop it
        # from being served: its prompt section alone is validated (errors name file and key).
        prompt = validate({k: v for k, v in data.items() if k == "prompt"}, str(saved)).prompt
    if prompt != cfg.prompt:
        log.info("%s: serving the run's own prompt templates (its %s)", run_dir.name, CONFIG_YML)
    return cfg.model_copy(update={"prompt": prompt})


def _is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file() and (path / "model" / "config.json").is_file()


class Generator:
    """A loaded model + tokenizer that turns prompts into headlines."""

    def __init__(self, model, tokenizer, cfg: Config, *, name: str, run: str | None = None,
                 version: str = "unknown", eval_scores: dict | None = None, packed: bool = True,
                 weights: str = "float32", prepacked: dict | None = None):

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.info = {"name": name, "run": run, "version": version}
        self.eval_scores = eval_scores or {}
        self.device = next(model.parameters()).device
        # Precision the linear layers run in: "float16" (CPU only, see trainer.cpu_linear) or the
        # model's own. Part of the service's cache key: it can change a headline.
        self.weights = "float32"
        if self.device.type == "cpu":
            from trainer import cpu_linear

            if weights == "float16" and cpu_linear.install_float16(model, prepacked):
                self.weights = "float16"
            elif weights == "int8" and cpu_linear.install_int8(model):
                self.weights = "int8"
            else:
                cpu_linear.install(model)
        self._eos = tokenizer.eos_token_id
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos
        # Tokens whose text holds a newline end a headline just like EOS does.
        vocab = len(tokenizer)
        self._stop_ids = frozenset(i for i in range(vocab) if "\n" in tokenizer.decode([i])) | {self._eos}
        # Only the last position's logits are used: asking for just those skips the prefill's
        # (B, T, V) LM-head product, as large as the rest of a step for a 135M model.
        import inspect

        keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._keep_logits = {"logits_to_keep": 1} if keep else {}
        from trainer import packed_attention

        # New requests' prompts ride in the running batch's steps where the model allows it
        # (``packed=False`` keeps the general path, for comparison).
        self._packed = packed and keep and packed_attention.enable(model)
        # The fixed words that every prompt of a template starts with ("Theme:", "Category:",
        # "Article:"), as token ids: their keys and values are the same in every such prompt, so
        # packed steps compute them once per Generator (``_lead``) and feed only the rest.
        self._leads = _template_leads(tokenizer, cfg.prompt) if self._packed else ()
        self._lead_kv: dict[tuple[int, ...], torch.Tensor] = {}
        # The cache buffer of the last packed batch that emptied, for the next batch to start in
        # (taken by one batch at a time): a service that answers one request at a time does not
        # make a buffer for each.
        self._spare_cache = None

    # -- loading --------------------------------------------------------------
    @classmethod
    def load(cls, ref: str, cfg: Config, *, weights: str = "float32") -> Generator:
        """Load a run folder (``runs/latest`` included) or any ``model.name`` value.

        ``weights="float16"`` serves the linear layers from float16 copies on CPU (the service's
        ``service.weights``); evaluation and the CLI keep the trained float32 weights."""
        from trainer.modeling import (
            inference_device,
            load_model_and_tokenizer,
            resolve_model_source,
            weights_version,
        )

        path = resolve_path(ref)
        if path.exists() and _is_run_dir(path.resolve()):
            run_dir = path.resolve()
            meta = json.loads((run_dir / "run.json").read_text())
            cfg = run_prompts(run_dir, cfg)
            device = inference_device()
            prepacked = None
            if weights == "float16" and device == "cpu":
                from trainer import cpu_linear

                prepacked = cpu_linear.prepack_float16(run_dir / "model")  # overlaps the imports below
            model, tokenizer = load_model_and_tokenizer(str(run_dir / "model"), cfg.model)
            model = model.to(device)
            scores = {}
            if (run_dir / "eval.json").is_file():
                scores = json.loads((run_dir / "eval.json").read_text())
            version = meta.get("version") or weights_version(run_dir / "model")
            return cls(model, tokenizer, cfg, name=meta.get("base_model", "unknown"),
                       run=meta.get("run_id", run_dir.name), version=version, eval_scores=scores,
                       weights=weights, prepacked=prepacked)
        if path.exists() and path.is_dir() and (path / "run.json").exists():
            raise TrainerError(f"{ref}: run has no final model yet (unfinished or cancelled run)")
        if ref.rstrip("/").endswith("latest") and not path.exists():
            raise TrainerError(
                f"{ref}: no finished run yet; train one with `headline train` "
                "or point service.model / --run at a base model"
            )
        source = resolve_model_source(ref, cfg.model)
        model, tokenizer = load_model_and_tokenizer(ref, cfg.model)
        model = model.to(inference_device())
        version = weights_version(source) if Path(source).is_dir() else "hub"
        return cls(model, tokenizer, cfg, name=ref, run=None, version=version, weights=weights)

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
        if isinstance(settings, GenerationSettings):
            settings = [settings] * len(prompts)
        if len(settings) != len(prompts):
            raise ValueError("settings must be one per prompt")
        if not prompts:
            return []
        batch = self.open_batch()
        batch.add(list(zip(prompts, settings, range(len(prompts)))))
        results: list[Generation | None] = [None] * len(prompts)
        while len(batch):
            for i, result in batch.step():
                results[i] = result
        return results

    def _lead(self, ids: list[int]) -> torch.Tensor | None:
        """Keys and values (layers, 2, 1, kv_heads, P, d) of the longest template lead that ``ids``
        starts with, leaving at least one token to feed; None when there is none.

        A prompt's first P tokens attend only to each other, so their keys and values are the
        same in every prompt that starts with them: computed on first use, then kept."""
        import torch

        from trainer.packed_attention import Packing

        for lead in self._leads:
            if len(lead) < len(ids) and tuple(ids[:len(lead)]) == lead:
                break
        else:
            return None
        held = self._lead_kv.get(lead)
        if held is None:
            P, dev = len(lead), self.device
            layers = self.model.config.num_hidden_layers
            packing = Packing(None, None, 0, [(0, P, 1, None)], P, layers=layers)
            with torch.inference_mode():
                self._packed_call(torch.tensor(lead, device=dev), torch.arange(P, device=dev), [P - 1], packing)
            end = packing.new_end
            held = self._lead_kv[lead] = packing.new_cache[:, :, :1, :, end - P:end].clone()  # (layers, 2, 1, kv_heads, P, d)
        return held

    def _packed_call(self, ids: torch.Tensor, positions: torch.Tensor, last: list[int], packing):
        """One model call on a packed sequence (``ids``, ``positions``: (S,)) with its ``packing``
        (trainer.packed_attention); logits only at the positions ``last``."""
        import torch

        dev = self.device
        return self.model(input_ids=ids.unsqueeze(0), position_ids=positions.unsqueeze(0),
                          # A 4-D mask is passed through as is: the real masks are in ``packing``.
                          attention_mask=torch.ones((1, 1, 1, 1), dtype=torch.bool, device=dev),
                          use_cache=False, logits_to_keep=torch.tensor(last, device=dev), packing=packing)

    def open_batch(self) -> DecodeBatch:
        """An empty decoding batch that requests can join between steps (continuous batching)."""
        return PackedDecodeBatch(self) if self._packed else DecodeBatch(self)

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
            # Drop a token when the tokens ranked above it already reach top_p; the most likely one
            # always stays (a top_p below float32's smallest number would otherwise drop it too).
            drop = (sorted_p.cumsum(0) - sorted_p) >= s.top_p
            drop[0] = False
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=gen)[0].to(logits.device)


@dataclass(eq=False)
class _Request:
    tag: Any
    prompt_tokens: int
    rows: list[_Row] = field(default_factory=list)
    left: int = 0  # rows still decoding


@dataclass(eq=False)
class _Row:
    request: _Request
    settings: GenerationSettings
    rng: torch.Generator | None
    out: list[int] = field(default_factory=list)
    ended: bool = False  # stopped by EOS/newline rather than by max_new_tokens


class DecodeBatch:
    """Rows decoded together, one token per model call; requests join between steps.

    One row per returned headline. The batch holds, for its active rows, the KV
    cache and the logits of each row's next token, so a step is: pick the next
    tokens (repetition penalty, greedy or the row's own sampler), drop the rows
    that ended, feed the others' tokens to the model. A finished row leaves the
    batch and the cache at once, so a long row does not drag short ones along.

    ``add`` is continuous batching: a request that arrives while others are
    decoding starts at the next step instead of waiting for the whole batch, and
    still gets exactly its own tokens: every row has its own positions, mask,
    penalty state and random generator. Here (the general path) new prompts are
    prefilled on their own at once and their KV cache is merged into the batch's,
    each side left-padded (with masked, zero keys) to the longer of the two.
    Only caches made of plain ``DynamicLayer`` s can be merged (sliding-window
    layers, as in Gemma 3, keep a window that left padding would shift); for
    such models ``can_join`` is False while the batch is busy. ``PackedDecodeBatch``
    (the models of ``trainer.packed_attention.MODEL_TYPES``) instead runs new
    prompts inside the next step's model call.

    Shapes: b = active rows, L = cached length (prompt + generated, left-padded), V = vocabulary.
    """

    def __init__(self, generator: Generator):
        self._g = generator
        self._vocab = generator.model.config.vocab_size
        self._rows: list[_Row] = []
        self._requests = 0
        self._cache = None
        self._joinable = True
        # One row per active row in each tensor: "attention" (b, L), "positions" of the last fed
        # token (b, 1), the ids of the tokens "seen" in prompt or output (b, S) for the repetition
        # penalty (each row's own at the right, left-padded with repeats of them),
        # "penalty" and "temperature" (b, 1), and the "logits" of the next token (b, V).
        self._t: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        """Requests still decoding."""
        return self._requests

    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def can_join(self) -> bool:
        return not self._rows or self._joinable

    def add(self, items: Sequence[tuple[str, GenerationSettings, Any]]) -> None:
        """Start decoding ``(prompt, settings, tag)`` items; ``step`` returns them by tag when done."""
        import torch

        if not items:
            return
        if not self.can_join:
            raise RuntimeError("this model's cache cannot take new rows while the batch is decoding")
        g = self._g
        admitted: list[tuple[list[_Row], list[int]]] = []
        encoded = [g.tokenizer(prompt, add_special_tokens=True)["input_ids"] for prompt, _, _ in items]
        if not all(encoded):  # checked before any is admitted: the batch is left as it was
            raise TrainerError("a prompt encodes to no tokens: there is nothing to generate from")
        for (_, settings, tag), ids in zip(items, encoded):
            settings = settings.effective()
            request = _Request(tag, len(ids), left=settings.num_return)
            for k in range(settings.num_return):
                rng = None
                if settings.do_sample:
                    rng = torch.Generator(device="cpu")
                    seed = settings.seed + k if settings.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
                    rng.manual_seed(seed)
                request.rows.append(_Row(request, settings, rng))
            admitted.append((request.rows, ids))
        self._admit(admitted)
        self._requests += len(items)

    def _admit(self, admitted: list[tuple[list[_Row], list[int]]]) -> None:
        """Prefill the new requests now and merge them into the batch."""
        import torch

        rows = [row for request_rows, _ in admitted for row in request_rows]
        encoded = [ids for request_rows, ids in admitted for _ in request_rows]
        with torch.inference_mode():
            self._prefill(rows, encoded)

    def _prefill(self, rows: list[_Row], encoded: list[list[int]]) -> None:
        import torch

        g, dev, vocab = self._g, self._g.device, self._vocab
        B, T = len(rows), max(len(ids) for ids in encoded)
        # Left padding keeps every row's last prompt token at position T-1.
        input_ids = torch.full((B, T), g._pad, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        for b, ids in enumerate(encoded):
            input_ids[b, T - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[b, T - len(ids):] = 1
        input_ids, attention = input_ids.to(dev), attention.to(dev)
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        result = g.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         use_cache=True, **g._keep_logits)
        # Padding positions repeat the row's last prompt token (a repeat changes nothing).
        seen = torch.where(attention.bool(), input_ids, input_ids[:, -1:]).clamp(max=vocab - 1)
        state = {
            "attention": attention, "positions": positions[:, -1:], "seen": seen,
            "logits": result.logits[:, -1, :vocab].float(), **_settings_state(rows, dev),
        }
        if not self._rows:
            self._cache = result.cache
            self._joinable = _mergeable(self._cache)
        else:
            if not _mergeable(result.cache):
                raise RuntimeError("this model's cache cannot take new rows while the batch is decoding")
            L = self._t["attention"].shape[1]
            width = max(L, T)
            _merge_caches(self._cache, result.cache, width - L, width - T)
            old = dict(self._t, attention=torch.nn.functional.pad(self._t["attention"], (width - L, 0)))
            state["attention"] = torch.nn.functional.pad(attention, (width - T, 0))
            old["seen"], state["seen"] = _same_width([old["seen"], state["seen"]])
            state = {name: torch.cat([old[name], value]) for name, value in state.items()}
        self._t = state
        self._rows.extend(rows)

    # Whether requests added between a step's pick and its model call (``step``'s ``refill``)
    # run in that model call: only where ``add`` merely queues them for the next call.
    joins_mid_step = False

    def step(self, on_done: Callable[[Any, Generation], None] | None = None,
             refill: Callable[[int], None] | None = None) -> list[tuple[Any, Generation]]:
        """One token for every active row; returns ``(tag, Generation)`` of requests that finished.

        A request is finished once its last token is chosen, before the step's model call (which
        only feeds the rows that go on): ``on_done(tag, result)`` hears of each one then, a model
        call earlier than the return value does. The service answers its clients from it.

        ``refill(finished)`` is called next, before the model call, when requests finished and
        others go on (``joins_mid_step`` batches only): what it ``add`` s runs in this step's model
        call, in the rows that the finished requests left, instead of a step later."""
        import torch

        with torch.inference_mode():
            done, next_ids = self._pick() if self._rows else ([], None)
            if on_done is not None:
                for tag, result in done:
                    on_done(tag, result)
            if refill is not None and done and self._rows and self.joins_mid_step:
                refill(len(done))
            self._forward(next_ids)
        return done

    def _pick(self) -> tuple[list[tuple[Any, Generation]], torch.Tensor]:
        """Choose every row's next token, finish the rows that end, drop them from the batch.

        Returns the finished requests and the next tokens of the rows that go on."""
        import torch

        g, t = self._g, self._t
        # Repetition penalty on the tokens each row has seen (tens of a vocabulary of tens of
        # thousands): computed at those entries only, in place (the logits are the batch's own).
        # A token listed twice in a row gets the same value written twice: penalized once.
        logits, ids, penalty = t["logits"], t["seen"], t["penalty"]
        seen = logits.gather(1, ids)
        logits.scatter_(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))
        next_ids = argmax_rows(logits)
        for i, row in enumerate(self._rows):
            if row.settings.do_sample:
                next_ids[i] = g._sample(logits[i] / t["temperature"][i], row.settings, row.rng)
        keep, done = [], []
        for i, (row, token) in enumerate(zip(self._rows, next_ids.tolist())):
            if token in g._stop_ids:
                row.ended = True
            else:
                row.out.append(token)
                if len(row.out) < row.settings.max_new_tokens:
                    keep.append(i)
                    continue
            row.request.left -= 1
            if row.request.left == 0:
                done.append((row.request.tag, self._result(row.request)))
        self._requests -= len(done)
        dropped = len(keep) < len(self._rows)
        if dropped:
            keep = self._slots(keep)
            idx = torch.tensor(keep, dtype=torch.long, device=g.device)
            self._t = {name: value[idx] for name, value in t.items()}
            self._rows = [self._rows[i] for i in keep]
            next_ids = next_ids[idx]
            # Columns that no remaining row attends to (the left padding of rows that left) go too,
            # so that under steady load the cache stays as wide as its longest row, not ever wider.
            attention = self._t["attention"]
            first = int(attention.any(0).to(torch.int8).argmax()) if keep else 0
            if self._keep_cache(idx, first):
                self._t["attention"] = attention[:, first:]
        t = self._t
        if self._rows:
            t["seen"] = torch.cat([t["seen"], next_ids.unsqueeze(1)], dim=1)
            if dropped:  # likewise the seen tokens' columns that only repeat others
                t["seen"] = t["seen"][:, -max(row.request.prompt_tokens + len(row.out) for row in self._rows):]
        return done, next_ids

    def _slots(self, keep: list[int]) -> list[int]:
        """The order of the rows that go on (``keep``: their places in the batch, ascending):
        row i of the batch after this step is row ``order[i]`` before it."""
        return keep

    def _keep_cache(self, idx: torch.Tensor, first: int) -> bool:
        """Keep the cache rows ``idx``; drop its first ``first`` (all-padding) columns if it can.

        Returns whether the columns were dropped."""
        if not len(idx):
            self._cache = None
            return False
        self._cache.batch_select_indices(idx)
        if not (first and self._joinable):  # a sliding-window layer's window would shift
            return False
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        return True

    def _forward(self, next_ids: torch.Tensor | None) -> None:
        """Feed the rows' next tokens; keep the cache and each row's next-token logits."""
        if not self._rows:
            self._cache, self._t = None, {}
            return
        g, t = self._g, self._t
        t["attention"] = torch_cat_ones(t["attention"])
        t["positions"] = t["positions"] + 1
        result = g.model(input_ids=next_ids.unsqueeze(1), attention_mask=t["attention"],
                         position_ids=t["positions"], cache=self._cache, use_cache=True, **g._keep_logits)
        self._cache = result.cache
        t["logits"] = result.logits[:, -1, :self._vocab].float()

    def _result(self, request: _Request) -> Generation:
        tok = self._g.tokenizer
        return Generation(
            texts=[postprocess(tok.decode(r.out, skip_special_tokens=True)) for r in request.rows],
            prompt_tokens=request.prompt_tokens,
            completion_tokens=sum(len(r.out) for r in request.rows),
            finished=[r.ended for r in request.rows],
        )


# Sampling temperatures below this act as this: the logits are divided by the temperature in
# float32, and a smaller one (any value > 0 is valid) would overflow them to inf and NaN. At 1e-4
# sampling is greedy already unless the two best logits are within ~1e-3 of each other.
MIN_TEMPERATURE = 1e-4


def _settings_state(rows: list[_Row], dev) -> dict[str, torch.Tensor]:
    """The rows' "penalty" and "temperature" columns (b, 1) of a batch's state."""
    import torch

    return {"penalty": torch.tensor([r.settings.repetition_penalty for r in rows], device=dev).unsqueeze(1),
            "temperature": torch.tensor([max(r.settings.temperature, MIN_TEMPERATURE) for r in rows],
                                        device=dev).unsqueeze(1)}


def _same_width(seen: list[torch.Tensor]) -> list[torch.Tensor]:
    """Seen-token ids (b, S) of several row groups, each left-padded to the widest S with repeats
    of its rows' first column (a repeat changes no penalty), so that they can be concatenated."""
    import torch

    wide = max(ids.shape[1] for ids in seen)
    return [ids if ids.shape[1] == wide else torch.cat([ids[:, :1].expand(-1, wide - ids.shape[1]), ids], dim=1)
            for ids in seen]


def argmax_rows(x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``x.argmax(-1)`` of logits (b, V): the same indices (each row's first largest value, or its
    first NaN), found through each chunk's maximum. On CPU argmax over a vocabulary costs ~75 us
    per row, amax ~5: this is several times cheaper, and a decoding step calls it for every row.
    Small vocabularies (the tests' tiny models) are cut into 8 chunks at least, so that they
    take this path too."""
    import torch

    b, vocab = x.shape
    chunk = max(8, min(chunk, vocab // 8))
    n = vocab // chunk
    if n < 2 or x.device.type != "cpu" or x.stride(1) != 1:
        return x.argmax(-1)
    rows = torch.arange(b)
    head = x[:, :n * chunk].unflatten(1, (n, chunk))  # (b, n, chunk), a view
    best = head.amax(-1).argmax(-1)  # the first chunk holding the row's largest value (or a NaN)
    idx = head[rows, best].argmax(-1) + best * chunk
    if n * chunk < vocab:  # the tail after the last whole chunk wins only if strictly larger
        tail = x[:, n * chunk:]
        tail_idx = tail.argmax(-1)
        tail_max, head_max = tail[rows, tail_idx], x[rows, idx]
        wins = (tail_max > head_max) | (tail_max.isnan() & ~head_max.isnan())
        idx = torch.where(wins, tail_idx + n * chunk, idx)
    return idx


def torch_cat_ones(attention: torch.Tensor) -> torch.Tensor:
    """``attention`` (b, L) with one more column of ones: each row's newly fed token."""
    import torch

    return torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)


class PackedDecodeBatch(DecodeBatch):
    """A DecodeBatch whose new prompts are run inside the next step's model call.

    ``add`` only tokenizes; the next ``step`` feeds, in one packed sequence, the
    decoding rows' tokens and every new prompt (trainer.packed_attention), so a
    joining request costs the batch a few more rows in that step's matrix products
    instead of a model call of its own. A prompt asked for n headlines is run once.
    The cache is the batch's own: every layer's keys and values in one buffer
    (layers, 2, slots, kv_heads, C, d), row i in slot i, its keys the last columns before
    ``_end`` (left-padded to the batch's width L), with ``attention`` (b, L) marking each
    row's real positions; see trainer.packed_attention.Packing.
    """

    joins_mid_step = True  # add() only queues a prompt for the next model call

    def __init__(self, generator: Generator):
        super().__init__(generator)
        self._pending: list[tuple[list[_Row], list[int]]] = []
        # trainer.packed_attention.Packing's buffer (layers, 2, slots, kv_heads, C, d): row i's keys
        # and values are the columns of slot i before _end, as many as its "attention" marks.
        self._cache = None
        self._end = 0

    @property
    def rows(self) -> int:
        return len(self._rows) + sum(len(rows) for rows, _ in self._pending)

    @property
    def can_join(self) -> bool:
        return True

    def _admit(self, admitted: list[tuple[list[_Row], list[int]]]) -> None:
        self._pending.extend(admitted)

    def _slots(self, keep: list[int]) -> list[int]:
        """Rows keep their slots in the cache buffers; each row that left is filled with one of
        the last rows, so that only those are moved (see ``_keep_cache``)."""
        b = len(keep)
        order, kept = list(range(b)), set(keep)
        movers = [i for i in keep if i >= b]
        for hole, mover in zip([i for i in range(b) if i not in kept], movers):
            order[hole] = mover
        return order

    def _keep_cache(self, idx: torch.Tensor, first: int) -> bool:
        """Moves the rows that ``_slots`` moved, in place: a slot's real keys are its last columns up
        to ``_end`` (at most as many as the batch is wide); the columns dropped (``first``) are
        left as padding, masked out where a row's window covers them."""
        from trainer.packed_attention import move_rows

        start = self._end - self._t["attention"].shape[1] + first  # this batch's first used column
        move_rows(self._cache, [(new, old) for new, old in enumerate(idx.tolist()) if new != old],
                  start, self._end)
        return True

    def _forward(self, next_ids: torch.Tensor | None) -> None:
        import torch

        from trainer.packed_attention import Packing

        g, dev, vocab = self._g, self._g.device, self._vocab
        b, pending, self._pending = len(self._rows), self._pending, []
        if not b and not pending:
            if self._cache is not None:  # the next batch starts in it
                g._spare_cache, self._cache = self._cache, None
            self._t = {}
            return
        t = self._t
        ids, positions, segments, last = [], [], [], list(range(b))
        mask, cached = None, 0
        if b:
            t["attention"] = torch_cat_ones(t["attention"])
            cached = t["attention"].shape[1]
            mask = t["attention"]
            ids.append(next_ids)
            positions.append(t["positions"][:, 0] + 1)
        offset = b
        prompts = [torch.tensor(prompt, dtype=torch.long, device=dev) for _, prompt in pending]
        for (rows, prompt), prompt_ids in zip(pending, prompts):
            lead = g._lead(prompt)  # its first P tokens' keys and values, computed once
            P = lead.shape[4] if lead is not None else 0
            segments.append((offset, len(prompt), len(rows), lead))
            ids.append(prompt_ids[P:])
            positions.append(torch.arange(P, len(prompt), device=dev))
            offset += len(prompt) - P
            last.append(offset - 1)
        width = max([cached] + [length for _, length, _, _ in segments])
        if self._cache is None:  # a new batch, or one that emptied: the spare buffer if any
            self._cache, g._spare_cache = g._spare_cache, None
        packing = Packing(self._cache, mask, b, segments, width, self._end,
                          layers=g.model.config.num_hidden_layers)
        result = g._packed_call(torch.cat(ids), torch.cat(positions), last, packing)
        logits = result.logits[0, :, :vocab].float()  # (b + new prompts, V)
        self._cache, self._end = packing.new_cache, packing.new_end

        state = []
        if b:
            state.append(dict(t, attention=torch.nn.functional.pad(t["attention"], (width - cached, 0)),
                              positions=t["positions"] + 1, logits=logits[:b]))
        for j, ((rows, _), prompt_ids, (_, length, n, _)) in enumerate(zip(pending, prompts, segments)):
            seen = prompt_ids.clamp(max=vocab - 1).expand(n, -1)
            attention = torch.zeros((n, width), dtype=torch.bool, device=dev)
            attention[:, width - length:] = True
            state.append({
                "attention": attention, "seen": seen, "logits": logits[b + j].expand(n, -1),
                "positions": torch.full((n, 1), length - 1, dtype=torch.long, device=dev),
                **_settings_state(rows, dev),
            })
            self._rows.extend(rows)
        for s, seen in zip(state, _same_width([s["seen"] for s in state])):
            s["seen"] = seen
        self._t = {name: torch.cat([s[name] for s in state]) for name in state[0]}


def _template_leads(tokenizer, prompt_cfg) -> tuple[tuple[int, ...], ...]:
    """Token ids of the literal text each prompt template starts with, longest first. A lead is
    used only for prompts whose ids start with exactly these (``Generator._lead``)."""
    from string import Formatter

    leads = set()
    for template in vars(prompt_cfg).values():
        if not isinstance(template, str):
            continue
        text = ""
        for literal, field_name, _, _ in Formatter().parse(template):  # "{{" comes as its own literal
            text += literal
            if field_name is not None:
                break
        else:
            continue  # no placeholder: not a template
        ids = tuple(tokenizer(text.rstrip(), add_special_tokens=True)["input_ids"]) if text.strip() else ()
        if ids:
            leads.add(ids)
    return tuple(sorted(leads, key=len, reverse=True))


def _mergeable(cache) -> bool:
    """Whether a KV cache can be left-padded and concatenated with another: plain dynamic layers only."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _merge_caches(into, other, pad_into: int, pad_other: int) -> None:
    """Append ``other``'s rows to ``into``, left-padding each side's keys/values to one length."""
    import torch
    from torch.nn.functional import pad

    for a, b in zip(into.layers, other.layers):
        a.keys = torch.cat([pad(a.keys, (0, 0, pad_into, 0)), pad(b.keys, (0, 0, pad_other, 0))])
        a.values = torch.cat([pad(a.values, (0, 0, pad_into, 0)), pad(b.values, (0, 0, pad_other, 0))])
