"""Step 5: default decoding settings used by eval and the service."""

from __future__ import annotations

from tui.screens.base import FieldsScreen


class GenerationScreen(FieldsScreen):
    STEP = "generation"
    HELP = (
        "Generation: the decoding used by `headline eval`, `headline generate` and the API\n"
        "service unless a request overrides it. do_sample false = greedy (deterministic);\n"
        "temperature, top_p and top_k apply only when sampling."
    )
    GROUPS = [
        ("Length and count", ["generation.max_new_tokens", "generation.num_headlines"]),
        ("Decoding", ["generation.do_sample", "generation.temperature", "generation.top_p",
                      "generation.top_k", "generation.repetition_penalty", "generation.seed"]),
    ]
