"""Fine-tune the base model into a headline writer: ``train(cfg) -> run folder``.

Reads top to bottom: batching helpers (collator, length-grouped sampler), the
progress sinks and callbacks that keep logging and evaluation out of the loop,
the TrainingArguments built from ``cfg.train``, and ``train()`` itself: set up the
run folder, load model and data, train, save the artefacts, evaluate.

The loop is the Hugging Face ``Trainer``, so the same code runs on one CPU, one
GPU, or several GPUs / machines without change:

    headline train                                   # one process
    accelerate launch -m trainer.cli train           # accelerate's config decides
    torchrun --nproc_per_node 4 -m trainer.cli train # 4 GPUs, data parallel

``train.batch_size`` is per device; the effective batch is
batch_size x grad_accum x number of processes. Only process 0 writes the run
folder, metrics and progress; every process trains.

No compute goes to padding: examples are grouped by length (each group of
batch_size x grad_accum examples is drawn from a shuffled mega-batch and sorted
by length) and every batch is padded only to its own longest example. Measured
in bench/train_throughput.py against a Trainer that pads to the longest example.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments

from config import Config, load_config
from trainer import runs
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


class TrainingCancelled(TrainerError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (exit code 130)."""

    def __init__(self, run_dir: Path, checkpoint: Path | None):
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        where = f"; resume with `headline train --resume {run_dir}`" if checkpoint else ""
        super().__init__(f"training cancelled, run {run_dir.name} saved as cancelled{where}")


# -- batches --------------------------------------------------------------------------------


@dataclass
class PadToLongest:
    """Collate examples into tensors padded to the longest example *of this batch*.

    input_ids / attention_mask / labels: (B, T) with T = the batch's longest example,
    rounded up to ``pad_to_multiple_of`` (8 on CUDA, where tensor cores like it; none
    on CPU, where it would only add work). Padding is on the right: pad id, mask 0,
    label -100 (ignored by the loss). Other columns (``length``) are dropped.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(features)
        input_ids = torch.full((B, longest), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((B, longest), dtype=torch.long)
        labels = torch.full((B, longest), -100, dtype=torch.long)
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[b, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[b, :n] = torch.as_tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
            labels[b, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class LengthGroupedSampler(Sampler):
    """Shuffled indices in which each run of ``group_size`` has similar lengths.

    Like transformers' sampler of the same name (shuffle, cut into mega-batches of
    50 groups, sort each by length) but with its own generator seeded by
    ``seed + epoch``: the order of an epoch does not depend on the global RNG, so a
    run resumed mid-epoch sees the same batches as the uninterrupted run, and all
    data-parallel processes agree on the order.

    A mega-batch must hold many groups: our examples are bimodal (short theme
    prompts, long article prompts), and a mega-batch of a few groups mixes the two
    in one batch, which then pads a 25-token example to 200. With 50 groups a
    dataset of up to 50 batches is sorted whole; the shuffle before the sort still
    breaks ties differently each epoch.
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int, mega_groups: int = 50):
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.mega = max(1, mega_groups) * max(1, group_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        megas = [order[i : i + self.mega] for i in range(0, len(order), self.mega)]
        megas = [sorted(m, key=lambda i: -self.lengths[i]) for m in megas]
        # Groups in random order, so an epoch does not run from long to short.
        groups = [m[i : i + self.group_size] for m in megas for i in range(0, len(m), self.group_size)]
        perm = torch.randperm(len(groups), generator=g).tolist()
        return iter([i for k in perm for i in groups[k]])


class HeadlineTrainer(Trainer):
    """The Hugging Face Trainer with our length-grouped sampler and a cheaper LM head.

    Only the headline tokens carry a loss, and they sit at the end of each example,
    so the (B, T, V) logits of the prompt positions are never needed: the model is
    asked for the logits of the last N positions only (``logits_to_keep``), from the
    first position that predicts a label, with the labels cut to match. With a 49k
    vocabulary this skips most of the LM-head matmul and the softmax over prompt and
    padding positions; the loss is the same number.
    """

    def __init__(self, *args, group_by_length: bool = True, sampler_seed: int = 0, **kwargs):
        self._group_by_length = group_by_length
        self._sampler_seed = sampler_seed
        super().__init__(*args, **kwargs)
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        self._keep_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    def _issue_warnings_after_load(self, load_result) -> None:
        """Loading a checkpoint (the best one at the end, or one to resume from) warns of the keys it
        lacked. A model with tied embeddings is saved with its shared weight once, so the LM head
        is always "missing" although it is the loaded embedding: such keys are tied again and not
        reported (Hugging Face's own check compares with ``_keys_to_ignore_on_save``, which such
        models leave empty). Any other missing or unexpected key is reported as before."""
        missing = set(load_result.missing_keys)
        if missing:
            names_of: dict[int, list[str]] = {}
            for name, param in self.model.named_parameters(remove_duplicate=False):
                names_of.setdefault(id(param), []).append(name)
            tied = {name for names in names_of.values() if not missing.issuperset(names)
                    for name in names if name in missing}
            if tied:
                self.model.tie_weights()
                load_result = load_result._replace(
                    missing_keys=[k for k in load_result.missing_keys if k not in tied])
        super()._issue_warnings_after_load(load_result)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if self._keep_logits and labels is not None:
            T = labels.shape[1]
            columns = (labels != -100).any(dim=0).nonzero()
            # Logits at position t predict token t+1: start one before the first label.
            start = max(int(columns[0]) - 1, 0) if len(columns) else 0
            if start > 0:
                inputs = {**inputs, "labels": labels[:, start:], "logits_to_keep": T - start}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self._group_by_length:
            return super()._get_train_sampler(train_dataset)
        group = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(dataset["length"], group, self._sampler_seed)


# -- progress -------------------------------------------------------------------------------


class ProgressWriter:
    """Progress events as JSON lines (docs/CONTRACTS.md), one per line, flushed per line."""

    def __init__(self, path: str | os.PathLike | None):
        self._fh = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115

    def emit(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self._fh.flush()

    def log(self, message: str, level: str = "info") -> None:
        getattr(log, level if level != "warning" else "warning")(message)
        self.emit("log", level=level, message=message)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TrainingMonitor(TrainerCallback):
    """Turns the Trainer's logs into metrics.jsonl rows, progress events and a tqdm bar.

    Tokens/s counts real tokens only (``num_input_tokens_seen`` with non_padding),
    measured over the last logging window; the ETA uses this process's mean step time.
    """

    def __init__(self, run_dir: Path, progress: ProgressWriter, *, n_train: int, n_val: int,
                 show_bar: bool = True):
        self.run_dir = run_dir
        self.progress = progress
        self.n_train, self.n_val = n_train, n_val
        self.show_bar = show_bar
        self.bar = None
        self.metrics = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.t0 = self.t_last = time.time()
        self.step0 = state.global_step
        self.tokens_last = state.num_input_tokens_seen
        self.tokens_per_s = 0.0
        self.loss = None
        per_epoch = max(1, math.ceil(self.n_train / (args.train_batch_size * args.gradient_accumulation_steps
                                                     * args.world_size)))
        self.progress.emit(
            "start", run_dir=str(self.run_dir), total_steps=state.max_steps,
            epochs=round(state.max_steps / per_epoch, 4),
            examples={"train": self.n_train, "validation": self.n_val}, time=time.time(),
        )
        self.metrics = open(self.run_dir / runs.METRICS, "a", encoding="utf-8")  # noqa: SIM115
        if self.show_bar:
            from tqdm.auto import tqdm

            # disable=None: no bar when stderr is not a terminal (the wizard reads the JSON).
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step",
                            desc="training", dynamic_ncols=True, disable=None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def _row(self, row: dict) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.metrics is None or not logs:
            return
        now = time.time()
        step = state.global_step
        if "loss" in logs:
            tokens = state.num_input_tokens_seen
            self.tokens_per_s = (tokens - self.tokens_last) / max(now - self.t_last, 1e-9)
            self.tokens_last, self.t_last = tokens, now
            self.loss = float(logs["loss"])
            done = max(step - self.step0, 1)
            eta = (now - self.t0) / done * max(state.max_steps - step, 0)
            lr = float(logs.get("learning_rate", 0.0))
            self._row({"step": step, "epoch": round(state.epoch or 0.0, 4), "loss": self.loss,
                       "learning_rate": lr, "grad_norm": _float(logs.get("grad_norm")),
                       "tokens_per_s": round(self.tokens_per_s, 1), "time": now})
            self.progress.emit(
                "step", step=step, total_steps=state.max_steps, epoch=round(state.epoch or 0.0, 4),
                loss=self.loss, learning_rate=lr, tokens_per_s=round(self.tokens_per_s, 1),
                elapsed_s=round(now - self.t0, 2), eta_s=round(eta, 1),
            )
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.loss:.4f}", tok_s=f"{self.tokens_per_s:,.0f}")
        if "eval_loss" in logs:
            val = float(logs["eval_loss"])
            ppl = math.exp(min(val, 50.0))
            self._row({"step": step, "epoch": round(state.epoch or 0.0, 4), "val_loss": val,
                       "val_perplexity": ppl, "time": now})
            self.progress.emit("eval", step=step, val_loss=val, val_perplexity=ppl)
            if self.bar is not None:
                self.bar.write(f"step {step}: validation loss {val:.4f} (perplexity {ppl:.2f})")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.progress.emit("checkpoint", step=state.global_step, path=str(path))

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: finish the current optimizer step, save a checkpoint, stop.

    A second signal falls through to the default handler (immediate exit).
    """

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def _handle(self, signum, frame):
        self.signal = signum
        log.warning("%s received: saving a checkpoint after this step (again to quit now)",
                    signal.Signals(signum).name)
        self.uninstall()

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# -- settings -------------------------------------------------------------------------------


def mixed_precision(precision: str) -> dict[str, bool]:
    """TrainingArguments flags: auto = bf16 autocast on a CUDA GPU that supports it, else fp32.

    Weights stay fp32 (the optimizer needs them); bf16 is autocast for the matmuls.
    """
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return {"bf16": cuda and torch.cuda.is_bf16_supported(), "fp16": False}
    if precision == "fp16" and not cuda:
        raise TrainerError("train.precision: fp16 needs a CUDA GPU (use fp32 or auto on CPU)")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(cfg: Config, checkpoint_dir: Path, **overrides: Any) -> TrainingArguments:
    """TrainingArguments from ``cfg.train``: one place maps our names to Hugging Face's."""
    t = cfg.train
    load_best = t.save_steps % t.eval_steps == 0  # the best eval step is then always saved
    kwargs = dict(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=load_best,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        restore_callback_states_from_checkpoint=True,  # early-stopping patience survives a resume
        remove_unused_columns=False,  # the collator picks its columns; the sampler reads "length"
        label_names=["labels"],
        prediction_loss_only=True,  # evaluation needs the loss, never the (N, T, V) logits
        report_to="none",
        disable_tqdm=True,  # our TrainingMonitor draws the bar
        dataloader_num_workers=0,
        **mixed_precision(t.precision),
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


# -- the run --------------------------------------------------------------------------------


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _setup_run(cfg: Config, resume: str | bool | None) -> tuple[Config, Path, Path | None]:
    """(config to use, run folder, checkpoint to resume from or None)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if resume:
        run_dir, checkpoint = runs.find_resumable(cfg.train.output_dir, resume)
        saved = load_config(run_dir / runs.CONFIG_YML)
        if saved.model_dump(exclude={"service"}) != cfg.model_dump(exclude={"service"}):
            log.warning("resuming %s with the config it started with (%s), not the current one",
                        run_dir.name, run_dir / runs.CONFIG_YML)
        return saved, run_dir, checkpoint
    if world == 1:
        return cfg, runs.create_run(cfg), None
    # Several processes: process 0 names and creates the folder, the others learn it.
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    holder = [str(runs.create_run(cfg)) if state.is_main_process else None]
    broadcast_object_list(holder)
    return cfg, Path(holder[0]), None


def _truncate_metrics(run_dir: Path, last_step: int) -> None:
    """On resume, drop rows logged after the checkpoint: they are logged again."""
    path = run_dir / runs.METRICS
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / runs.METRICS
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def train(
    cfg: Config,
    *,
    resume: str | bool | None = None,
    progress_json: str | os.PathLike | None = None,
    evaluate_after: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    show_bar: bool = True,
) -> Path:
    """Fine-tune ``cfg.model.name`` on ``cfg.data`` into a new run folder and return it.

    ``resume``: True = the newest unfinished run under output_dir, or a run reference;
    the run continues in its own folder from its last checkpoint with its saved config.
    Raises TrainingCancelled on SIGINT/SIGTERM (after a checkpoint), TrainerError on
    bad data or model; the run is then marked cancelled / failed.
    """
    from trainer.dataset import build_dataset_dict
    from trainer.modeling import apply_lora, load_model_and_tokenizer

    main = _rank() == 0
    progress = ProgressWriter(progress_json if main else None)
    cfg, run_dir, checkpoint = _setup_run(cfg, resume)
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    stopper = StopOnSignal()
    stopper.install()
    monitor = None
    try:
        if checkpoint is not None:
            progress.log(f"resuming {run_dir.name} from {checkpoint.name}")
            if main:
                _truncate_metrics(run_dir, int(checkpoint.name.split("-")[1]))
                runs.set_status(run_dir, "running", finished=None)
        log.info("run folder: %s", run_dir)

        # Model and data. Weights are fp32; bf16 (CUDA) is autocast by the Trainer.
        model, tokenizer = load_model_and_tokenizer(cfg.model.name, cfg.model, for_training=True)
        if cfg.model.method == "lora":
            model = apply_lora(model, cfg.model.lora)
        model.config.use_cache = False  # no KV cache while training: it only costs memory
        datasets, report, _ = build_dataset_dict(cfg, tokenizer)
        if main:
            report.save(run_dir)
        train_ds, val_ds = datasets["train"], datasets["validation"]
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise TrainerError("data: the train and validation splits must not be empty")

        args = training_arguments(cfg, run_dir / runs.CHECKPOINTS)
        monitor = TrainingMonitor(run_dir, progress, n_train=len(train_ds), n_val=len(val_ds),
                                  show_bar=show_bar)
        cbs = [monitor, stopper, *callbacks]
        if t.early_stopping_patience:
            from transformers import EarlyStoppingCallback

            cbs.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
        trainer = HeadlineTrainer(
            model=model,
            args=args,
            data_collator=PadToLongest(tokenizer.pad_token_id, 8 if torch.cuda.is_available() else None),
            train_dataset=train_ds,
            eval_dataset=val_ds,
            processing_class=tokenizer,
            callbacks=cbs,
            group_by_length=t.group_by_length,
            sampler_seed=t.seed,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the monitor reports

        # Train. A signal only sets a flag; StopOnSignal stops after the step, with a checkpoint.
        if stopper.signal is None:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        state = trainer.state
        if stopper.signal is not None:
            last = runs.last_checkpoint(run_dir)
            if main:
                runs.set_status(run_dir, "cancelled")
                progress.emit("cancelled", run_dir=str(run_dir), checkpoint=str(last) if last else None)
            raise TrainingCancelled(run_dir, last)
        if state.max_steps and state.global_step < state.max_steps:
            progress.log(
                f"early stopping at step {state.global_step}: validation loss did not improve for "
                f"{t.early_stopping_patience} evaluations (best {state.best_metric:.4f} at "
                f"{Path(state.best_model_checkpoint or '').name or 'n/a'})"
            )

        # Artefacts: the final (best) model, curve, card, status, latest.
        if main:
            model_dir = save_final_model(trainer, tokenizer, run_dir / runs.MODEL_DIR)
            from trainer.modeling import weights_version
            from trainer.plotting import plot_loss_curve

            metrics = read_metrics(run_dir)
            plot_loss_curve(metrics, run_dir / "loss_curve.png", title=f"{run_dir.name} ({cfg.model.name})")
            version = weights_version(model_dir)
            write_model_card(run_dir, cfg, report, trainer, version)
            runs.set_status(run_dir, "finished", version=version, steps=state.global_step,
                            best_val_loss=_float(state.best_metric))
            runs.update_latest(run_dir)
            progress.log(f"model saved to {model_dir} (version {version})")
    except TrainingCancelled:
        raise
    except BaseException as exc:
        if main:
            runs.set_status(run_dir, "failed", error=str(exc)[:500])
            progress.emit("error", message=str(exc) or type(exc).__name__)
        raise
    finally:
        stopper.uninstall()
        if monitor is not None:
            monitor.close()
        if not main:
            progress.close()

    if not main:
        return run_dir
    try:
        if evaluate_after:
            _evaluate_and_report(run_dir, cfg, progress)
        progress.emit("done", run_dir=str(run_dir), status="finished")
    finally:
        progress.close()
    return run_dir


def _evaluate_and_report(run_dir: Path, cfg: Config, progress: ProgressWriter) -> None:
    from trainer.evaluate import evaluate

    try:
        result = evaluate(run_dir, cfg)
    except TrainerError as exc:
        progress.log(f"evaluation failed: {exc}", level="warning")
        return
    progress.emit("eval_result", metrics=result)
    samples = [
        {"theme": row.get("theme") or "", "category": row.get("category"),
         "base": row.get("base") or "", "fine_tuned": row.get("fine_tuned") or ""}
        for row in result.get("examples", []) if row.get("task") == "theme"
    ][:5]
    progress.emit("samples", samples=samples)


def save_final_model(trainer: Trainer, tokenizer, model_dir: Path) -> Path:
    """Save the trained (best) model as a plain model: LoRA adapters are merged first."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # a peft model: fold B @ A into the base weights
        model = model.merge_and_unload()
    model.config.use_cache = True
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return model_dir


EVAL_MARKER = "## Evaluation (test split)"


def write_model_card(run_dir: Path, cfg: Config, report, trainer: Trainer, version: str) -> Path:
    from trainer.modeling import PACKAGED

    t, state = cfg.train, trainer.state
    base = cfg.model.name
    licence = PACKAGED[base].license if base in PACKAGED else "see the base model's own licence"
    if base == "gemma3-270m":
        licence = ("Gemma Terms of Use (https://ai.google.dev/gemma/terms): this fine-tuned model is "
                   "a Model Derivative and is distributed under the same terms")
    evals = [r for r in read_metrics(run_dir) if "val_loss" in r]
    best = min((r["val_loss"] for r in evals), default=None)
    lora = ""
    if cfg.model.method == "lora":
        lo = cfg.model.lora
        lora = f" (LoRA r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, on {', '.join(lo.target_modules)}; merged)"
    lines = [
        f"# Model card: {run_dir.name}",
        "",
        "A news-headline writer: given a short theme (e.g. \"oil price\") or an article, it writes "
        "one headline and stops.",
        "",
        f"- **Base model:** `{base}`",
        f"- **Licence:** {licence}",
        f"- **Method:** {cfg.model.method} fine-tuning{lora}",
        f"- **Version:** `{version}` (sha256 of the weights)",
        f"- **Data:** `{report.source}` ({report.format}), {report.rows_kept} articles kept of "
        f"{report.rows_read} read; splits {report.splits}; see data_report.md",
        f"- **Tasks:** {', '.join(cfg.prompt.tasks)}; prompts as in config.yml",
        "",
        "## Hyperparameters",
        "",
        "| Setting | Value |",
        "|---|---|",
        f"| steps | {state.global_step} of {state.max_steps} |",
        f"| batch size x grad accum x processes | {t.batch_size} x {t.grad_accum} x {trainer.args.world_size} |",
        f"| learning rate / schedule / warmup | {t.learning_rate} / {t.scheduler} / {t.warmup_steps} steps |",
        f"| weight decay / max grad norm | {t.weight_decay} / {t.max_grad_norm} |",
        f"| precision | {'bf16' if trainer.args.bf16 else 'fp16' if trainer.args.fp16 else 'fp32'} |",
        f"| max sequence length | {t.max_seq_len} tokens |",
        f"| seed | {t.seed} |",
        "",
        "## Limits",
        "",
        "Trained on a small news corpus; headlines can be wrong about facts in the article and "
        "should be checked by a person before publication.",
        "",
        "## Scores",
        "",
        f"- Best validation loss: {best:.4f} (perplexity {math.exp(best):.2f})" if best is not None
        else "- No validation loss recorded.",
        "",
        EVAL_MARKER,
        "",
        "Not evaluated yet: run `headline eval RUN` (eval.md has the full report).",
        "",
    ]
    path = run_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
