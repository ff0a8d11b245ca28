"""Export the trained model in Hugging Face format, and optionally push it to the Hub.

``export_hf`` writes a ``save_pretrained`` directory (safetensors weights + config) that
``AutoModelForCausalLM.from_pretrained`` loads, plus ``gauntlet.json`` naming the run, window and
tokenizer. A BPE tokenizer trained by ``prepare`` is saved alongside as a fast tokenizer; the byte
tokenizer needs no files (token id = UTF-8 byte, 0 ends a document).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("gauntlet.export")


def export_hf(model: torch.nn.Module, out_dir: str | Path, *, run: str, window: int, tokenizer=None,
              tokenizer_spec: str = "bytes") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    raw = getattr(tokenizer, "_tok", None)
    if raw is not None and hasattr(raw, "to_str"):  # a `tokenizers` BPE trained by prepare
        from transformers import PreTrainedTokenizerFast  # deferred: only a trained BPE tokenizer needs it

        PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(out)
    (out / "gauntlet.json").write_text(json.dumps({"run": run, "window": window, "tokenizer": tokenizer_spec}))
    return out


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None, attempts: int = 4,
                backoff_s: float = 2.0, upload: Callable | None = None) -> None:
    """Upload an exported folder, retrying transient failures with exponential back-off."""
    if upload is None:
        from huggingface_hub import HfApi  # deferred: pushing to the Hub is opt-in

        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        upload = api.upload_folder
    for attempt in range(attempts):
        try:
            upload(folder_path=str(folder), repo_id=repo_id, commit_message="gauntlet export")
            return
        except (OSError, ConnectionError, TimeoutError) as exc:
            if attempt + 1 == attempts:
                raise
            wait = backoff_s * 2**attempt
            log.warning("push to %s failed (%s); retrying in %.0f s", repo_id, exc, wait)
            time.sleep(wait)
