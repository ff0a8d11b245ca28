"""Coverage-guided fuzzing of the message decoder with atheris (libFuzzer for Python).

    pip install atheris
    python fuzz/fuzz_decode_message.py -max_total_time=600 fuzz/corpus/   # 10 minutes
    python fuzz/fuzz_decode_message.py -runs=100000                          # a fixed number of inputs

The seed corpus is a few valid messages (written to ``fuzz/corpus/`` on the first run). Inputs are
decoded twice: as bytes off the network (signature required), and with the signature waived and the
payload hash fixed up so that the fuzzer reaches the structural checks behind them (a registered
peer can sign any bytes it likes). The
only acceptable outcomes are a decoded message or a ``GauntletError``; anything else — another
exception, a hang (``-timeout``), an allocation over ``-rss_limit_mb`` — is a crash that libFuzzer
saves as ``crash-*`` / ``timeout-*`` / ``oom-*`` for replay: ``python fuzz/fuzz_decode_message.py crash-...``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gauntlet.config import SparseLoCoConfig
    from gauntlet.errors import GauntletError
    from gauntlet.identity import verify_signature
    from gauntlet.sparseloco import decode_message

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"attn.weight": (128, 192), "odd.weight": (97, 131), "norm.weight": (192,)}
CFG = SparseLoCoConfig()


def seed_corpus(folder: Path) -> None:
    """A few valid messages to start from (2-, 4- and 8-bit codes)."""
    import torch

    from gauntlet.identity import Identity
    from gauntlet.sparseloco import ErrorFeedback, encode_message

    folder.mkdir(parents=True, exist_ok=True)
    signer = Identity.from_seed("fuzz")
    for bits in (2, 4, 8):
        cfg = SparseLoCoConfig(quant_bits=bits)
        g = torch.Generator().manual_seed(bits)
        delta = {n: torch.randn(s, generator=g) for n, s in SPEC.items()}
        data = encode_message(ErrorFeedback(SPEC, cfg).compress(delta), window=1, run="fuzz", codec=cfg, signer=signer)
        (folder / f"valid-{bits}bit.safetensors").write_bytes(data)


def with_matching_hash(data: bytes) -> bytes:
    """``data`` with its header's payload_sha256 set to the payload's (unchanged if unparseable)."""
    try:
        (n,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + n])
        inner = json.loads(header["__metadata__"]["gauntlet"])
        inner["payload_sha256"] = hashlib.sha256(data[8 + n :]).hexdigest()
        header["__metadata__"]["gauntlet"] = json.dumps(inner, sort_keys=True, separators=(",", ":"))
        text = json.dumps(header, separators=(",", ":")).encode()
    except Exception:  # noqa: BLE001 - any input that does not parse is used as it is
        return data
    text += b" " * ((-len(text) - 8) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def test_one_input(data: bytes) -> None:
    for candidate, verify in ((data, verify_signature), (with_matching_hash(data), lambda *_: True)):
        try:
            decode_message(candidate, spec=SPEC, expected_run="fuzz", verify=verify, max_bytes=1 << 20)
        except GauntletError:
            pass


def main() -> None:
    corpus = ROOT / "fuzz" / "corpus"
    if not corpus.exists():
        seed_corpus(corpus)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
