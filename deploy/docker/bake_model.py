"""Build-time step: convert a packaged base model (GGUF) to safetensors under model.cache_dir.

Run from the image's working directory so the cache lands where the service looks for it.
Prefers the trainer's own converter; falls back to one CLI generation, which converts on
first use through the same code path.
"""

from __future__ import annotations

import subprocess
import sys

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"

try:
    from config import load_config
    from trainer import modeling
except ImportError:
    modeling = None

converter = None
if modeling is not None:
    for attr in ("ensure_packaged_model", "convert_packaged_model", "packaged_model_dir"):
        converter = getattr(modeling, attr, None)
        if callable(converter):
            break
        converter = None

if converter is not None:
    cfg = load_config()
    try:
        path = converter(name, cfg.model.cache_dir)
    except TypeError:
        path = converter(name, cfg)
    print(f"converted {name} -> {path}")
else:
    subprocess.run(
        ["headline", "generate", "--theme", "warmup", "--run", name, "--n", "1"], check=True
    )
