"""Build-time step: convert a packaged base model (GGUF) to safetensors under model.cache_dir.

Run from the image's working directory so the cache lands where the service looks for it
(config.yml's model.cache_dir, relative to /app). Uses the trainer's own converter, the same
code the service and trainer would run on first use.
"""

from __future__ import annotations

import sys

from config import load_config
from trainer.modeling import ensure_packaged_model

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
print(f"converted {name} -> {ensure_packaged_model(name, load_config().model.cache_dir)}")
