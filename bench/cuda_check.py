"""On a CUDA machine, what CI (CPU only) cannot check: bf16 training, generation on the GPU,
continuous batching there, and the training-throughput ratio on a GPU.

    python3 bench/cuda_check.py --arch .cache/models/smollm2-135m-instruct

``--arch`` is a model folder whose config and tokenizer are used with *random* weights (the
weights themselves need not travel to the GPU machine), so losses and headlines mean nothing;
code paths, dtypes and timings do. Data: the project's sample news. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def random_model(arch: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(arch)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(arch).save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=Path, required=True, help="model folder: config + tokenizer")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()

    import torch

    from config import load_config
    from trainer.generation import GenerationSettings, Generator
    from trainer.train import train

    assert torch.cuda.is_available(), "no CUDA device"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    failures = []
    work = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    model_dir = random_model(args.arch, work / "model")

    # 1. Training: precision auto must mean bf16 autocast on this GPU; the run folder must be complete.
    cfg = load_config(None, [f"model.name={model_dir}", "data.source=data/sample_news.jsonl",
                             f"train.output_dir={work / 'runs'}", f"train.max_steps={args.steps}",
                             "train.eval_steps=20", "train.save_steps=20", "train.warmup_steps=4",
                             "eval.max_examples=16"])
    t0 = time.perf_counter()
    run_dir = train(cfg, show_bar=False)
    seconds = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    card = (run_dir / "MODEL_CARD.md").read_text()
    precision = next((ln for ln in card.splitlines() if ln.startswith("| precision |")), "?")
    print(f"train: {args.steps} steps in {seconds:.1f} s (with evaluation); loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"model card: {precision}", flush=True)
    if "bf16" not in precision:
        failures.append(f"precision auto did not train in bf16 on CUDA: {precision}")
    for part in ("model/config.json", "metrics.jsonl", "loss_curve.png", "eval.json"):
        if not (run_dir / part).exists():
            failures.append(f"run folder lacks {part}")
    if not losses[-1] < losses[0]:
        failures.append(f"loss did not go down: {losses[0]} -> {losses[-1]}")

    # 2. Generation on the GPU, and continuous batching there: joined rows == one at a time.
    gen = Generator.load(str(run_dir), cfg)
    print(f"generator device: {gen.device}", flush=True)
    if gen.device.type != "cuda":
        failures.append(f"generator on {gen.device}, not cuda")
    items = [(gen.prompt(theme=t), GenerationSettings(max_new_tokens=n, do_sample=s, seed=3), i)
             for i, (t, n, s) in enumerate([("oil price", 12, False), ("cup final", 9, True),
                                            ("phone maker shares rise again", 7, True), ("tax", 5, False)])]
    batch, done = gen.open_batch(), {}
    batch.add(items[:1])
    done.update(batch.step())
    done.update(batch.step())
    batch.add(items[1:3])
    done.update(batch.step())
    batch.add(items[3:])
    while len(batch):
        done.update(batch.step())
    for prompt, settings, tag in items:
        alone = gen.generate([prompt], [settings])[0]
        if (done[tag].texts, done[tag].completion_tokens) != (alone.texts, alone.completion_tokens):
            failures.append(f"continuous batching on CUDA: request {tag} differs from its one-at-a-time run")
    print(f"continuous batching on CUDA: {len(items)} requests joined at 3 step boundaries, "
          f"{'equal' if not any('continuous' in f for f in failures) else 'NOT equal'} to one at a time", flush=True)
    t0 = time.perf_counter()
    out = gen.generate([gen.prompt(theme=f"theme {i}") for i in range(32)], GenerationSettings(max_new_tokens=16))
    print(f"generate: 32 prompts x 16 tokens in {time.perf_counter() - t0:.2f} s "
          f"({sum(o.completion_tokens for o in out)} tokens)", flush=True)

    # 3. Training throughput on the GPU: ours vs the pad-to-longest Trainer, same script as on CPU.
    for batch_size in (8, 32):
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--model", str(model_dir),
                               "--data", "data/sample_news.jsonl", "--articles", "166",
                               "--batch-size", str(batch_size)], capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith(("ours", "baseline", "ratio", "data"))]
        print(f"train_throughput.py --batch-size {batch_size}:\n  " + "\n  ".join(lines), flush=True)
        if not any(ln.startswith("ratio") for ln in lines):
            failures.append(f"train_throughput.py --batch-size {batch_size} failed: {proc.stderr[-2000:]}")

    print("FAILED:\n- " + "\n- ".join(failures) if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
