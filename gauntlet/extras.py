"""Optional dependencies: which extra of ``pip install 'gauntlet[EXTRA]'`` brings each package.

``pip install gauntlet`` installs only what :mod:`gauntlet.sparseloco` needs (torch, numpy, pydantic,
safetensors and bittensor-core for signatures). The nodes import the rest lazily, where it is used;
when one is missing, :func:`install_hint` turns the ImportError into the line that fixes it.
"""

from __future__ import annotations

EXTRA_OF = {
    "bittensor": "node", "boto3": "node", "botocore": "node", "openskill": "node", "prometheus_client": "node",
    "transformers": "node", "wandb": "wandb",
    "tokenizers": "node", "huggingface_hub": "node", "rich": "node", "matplotlib": "node",
    "moto": "sim", "flask": "sim", "werkzeug": "sim",
    "pyarrow": "data", "datasets": "data",
}
WHAT = {
    "node": "the peer, validator and simulation nodes",
    "sim": "the embedded S3 server of simulations",
    "data": "parquet and Hugging Face datasets",
    "wandb": "logging to Weights & Biases (--wandb.project)",
}


def install_hint(exc: ImportError) -> str | None:
    """``"... pip install 'gauntlet[node]'"`` when ``exc`` is a missing optional package, else None."""
    root = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRA_OF.get(root)
    if extra is None:
        return None
    return (f"the package {root!r} is not installed; it comes with {WHAT[extra]}: "
            f"pip install 'gauntlet[{extra}]'")
