"""A tiny random causal LM with a real tokenizer, built offline for tests.

The tokenizer is a byte-level BPE trained in a fraction of a second on a few
news-like sentences; the model is a 2-layer GPT-2 with random weights. Saved
with ``save_pretrained`` it loads through exactly the same code path as a real
Hugging Face model folder.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Oil prices rise as supply fears grow in global markets",
    "Government unveils plan to cut taxes for small firms",
    "Local team wins cup final after dramatic penalty shoot-out",
    "New phone maker shares jump on strong quarterly sales",
    "Film festival opens with premiere of award-winning drama",
    "Theme: oil price\nHeadline: Oil prices climb to record high",
    "Category: business\nArticle: The company said profits doubled.\nHeadline:",
    "Minister resigns over spending row as election nears",
    "Scientists build faster chip for mobile gaming devices",
    "Singer tops charts for third week with debut album",
]


def make_tiny_model(path: str | Path, *, vocab_size: int = 512, seed: int = 0, arch: str = "gpt2") -> Path:
    """Write a tokenizer and a random 2-layer model to ``path``; return the path.

    ``arch``: "gpt2", or "llama" (the family of the packaged SmolLM2: rotary positions, RMS
    norm, grouped-query attention with 4 query heads over 2 key/value heads).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(path)

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        LlamaForCausalLM(config).save_pretrained(path)
        return path
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path
