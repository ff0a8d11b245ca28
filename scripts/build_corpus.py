"""Rebuild gauntlet/data/corpus/stdlib.jsonl.xz, the built-in offline corpus, from this interpreter's
standard library: every ``.py`` file outside site-packages, sorted by path, one JSON line
``{"id": PATH, "text": TEXT}`` each. Shipped so that every node prepares the same bytes whatever its
Python version. Run it only to change the corpus (that changes every run that uses it: update
BUILTIN_SHA256 in gauntlet/data/sources.py).

    python scripts/build_corpus.py   # prints the file's sha256
"""

import hashlib
import json
import lzma
import shutil
import sys
import sysconfig
from pathlib import Path

out = Path(__file__).resolve().parents[1] / "gauntlet" / "data" / "corpus"
root = Path(sysconfig.get_paths()["stdlib"])
lines = []
for path in sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts):
    text = path.read_text(encoding="utf-8", errors="replace")
    lines.append(json.dumps({"id": path.relative_to(root).as_posix(), "text": text}, ensure_ascii=False) + "\n")
data = lzma.compress("".join(lines).encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
(out / "stdlib.jsonl.xz").write_bytes(data)
shutil.copyfile(root / "LICENSE.txt", out / "LICENSE-PSF.txt")
print(f"{len(lines)} files of Python {sys.version.split()[0]}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
