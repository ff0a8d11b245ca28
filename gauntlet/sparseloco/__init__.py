"""SparseLoCo: top-k sparse, quantised pseudo-gradients with error feedback (pure torch, no I/O).

Modules, in the order data flows through them:

- :mod:`~.chunking`  how tensors of any shape are tiled into chunks
- :mod:`~.quant`, :mod:`~.bitpack`  n-bit codes with a lookup table; bit packing
- :mod:`~.compress`, :mod:`~.feedback`  per-chunk top-k and the error-feedback loop
- :mod:`~.wire`  the signed message format; :func:`~.wire.decode_message` validates any bytes
- :mod:`~.aggregate`  median clipping, ``mean`` / ``scatter_mean``, the outer SGD step
- :mod:`~.diloco`  the dense DiLoCo baseline
- :mod:`~.embed`, :mod:`~.transport`  the optimizer wrapper for any synchronous trainer
"""

from gauntlet.sparseloco.aggregate import aggregate, outer_step
from gauntlet.sparseloco.chunking import TensorLayout, make_layout
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.sparseloco.feedback import ErrorFeedback
from gauntlet.sparseloco.fingerprint import fingerprint
from gauntlet.sparseloco.wire import Message, decode_message, encode_message
from gauntlet.sparseloco.embed import DiLoCo, SparseLoCo, SyncReport  # noqa: E402 (uses the modules above)
from gauntlet.sparseloco.transport import SoloTransport, TorchDistributedTransport, Transport

__all__ = [
    "CompressedTensor",
    "DiLoCo",
    "ErrorFeedback",
    "Message",
    "SoloTransport",
    "SparseLoCo",
    "SyncReport",
    "TensorLayout",
    "TorchDistributedTransport",
    "Transport",
    "aggregate",
    "decode_message",
    "encode_message",
    "fingerprint",
    "make_layout",
    "outer_step",
]
