"""Causal language models: Llama-style presets built from transformers configs, or any local / hub
causal LM through ``from_pretrained``; device selection and the loss used to evaluate them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import torch

from gauntlet.config import ModelConfig
from gauntlet.errors import ConfigError

# hidden, intermediate (≈ 8/3 · hidden, rounded to 16), layers, attention heads, key/value heads
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (256, 688, 4, 4, 4),  # ≈3.3M parameters with byte tokens: seconds per window on 2 CPU cores
    "small": (512, 1376, 8, 8, 8),  # ≈25M with byte tokens (+ 2·512·vocab for larger vocabularies)
    "150M": (768, 2048, 12, 12, 12),
    "1B": (2048, 5632, 16, 32, 8),
}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but no CUDA device is available; use cpu or auto")
    return device


def build_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int, seed: int) -> torch.nn.Module:
    """A model with identical initial weights on every node (seeded), on the configured device."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # deferred: the [node] extra

    device = pick_device(cfg.device)
    if cfg.preset in PRESETS:
        hidden, inter, layers, heads, kv = PRESETS[cfg.preset]
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                             max_position_embeddings=max_seq_len, tie_word_embeddings=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        return model.to(device)
    path = Path(cfg.preset).expanduser()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else cfg.preset)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.preset={cfg.preset!r} is not a preset ({', '.join(PRESETS)}) and could not "
                          f"be loaded with from_pretrained: {exc}") from None
    if model.get_input_embeddings().num_embeddings < vocab_size:
        raise ConfigError(f"model {cfg.preset!r} has fewer embeddings than the tokenizer's {vocab_size} tokens")
    return model.to(device)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: Iterable[torch.Tensor], bf16: bool = True) -> float:
    """Mean next-token cross-entropy over batches of token ids (model left in its previous mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, bf16):
            total += float(model(input_ids=batch, labels=batch).loss)
        count += 1
    model.train(was_training)
    return total / max(count, 1)
