"""Where documents come from: the built-in offline corpus, local files, or a hub dataset.

The built-in corpus (``stdlib``) is the source code of Python 3.11.7's standard library (1,790 files,
32 MB of text), shipped with gauntlet as ``corpus/stdlib.jsonl.xz`` (under the PSF license, next to
it): the same bytes on every machine, whatever its Python version.

Every source yields ``(doc_id, text)`` in a fixed order, so that every node that prepares the same
source gets the same token stream. The train/validation split is by document: a document goes to
validation when the first two bytes of ``sha256(doc_id)``, read as a big-endian number, fall below
``val_fraction · 65536``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from collections.abc import Iterator
from pathlib import Path

from gauntlet.errors import ConfigError, DataError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}
BUILTIN = Path(__file__).parent / "corpus" / "stdlib.jsonl.xz"
BUILTIN_SHA256 = "9fef0e117bcfa4a6f2615e67760d40081e7ecfc79fc8d830d428e1f8a0487610"


def is_validation(doc_id: str, val_fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:2], "big") < val_fraction * 65536


def _stdlib(path: Path = BUILTIN, sha256: str = BUILTIN_SHA256) -> Iterator[tuple[str, str]]:
    try:
        packed = path.read_bytes()
    except OSError as exc:
        raise DataError(f"the built-in corpus {path} cannot be read ({exc.strerror or exc}): reinstall gauntlet") from None
    if hashlib.sha256(packed).hexdigest() != sha256:
        raise DataError(f"the built-in corpus {path} is not the one this release ships (its sha256 differs): "
                        f"reinstall gauntlet")
    for line in lzma.decompress(packed).decode("utf-8").split("\n")[:-1]:
        row = json.loads(line)
        yield row["id"], row["text"]


def _jsonl(path: Path) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n + 1} is not valid JSON: {exc}") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ConfigError(f"{path}:{n + 1} needs a string field 'text'")
                yield f"{path.name}:{n}", row["text"]


def _json(path: Path) -> Iterator[tuple[str, str]]:
    """A ``.json`` file as Hugging Face ``datasets`` writes it: JSON lines, or one array of objects."""
    with open(path, encoding="utf-8") as fh:
        first = fh.read(1)
        while first.isspace():
            first = fh.read(1)
    if first != "[":
        yield from _jsonl(path)
        return
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path}: item {n} needs a string field 'text'")
        yield f"{path.name}:{n}", row["text"]


def _parquet(path: Path) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq  # deferred: the [data] extra, for parquet files only
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow: pip install 'gauntlet[data]'") from None
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises its own types for unreadable files
        raise DataError(f"{path}: not a readable parquet file: {exc}") from None
    if "text" not in names:
        raise DataError(f"{path}: parquet file has no 'text' column (columns: {', '.join(names[:12])})")
    for n, text in enumerate(pq.read_table(path, columns=["text"]).column("text").to_pylist()):
        yield f"{path.name}:{n}", text or ""


def _hf_rows(path: Path, rows) -> Iterator[tuple[str, str]]:
    if "text" not in rows.column_names:
        raise DataError(f"{path}: dataset has no 'text' column (columns: {', '.join(rows.column_names[:12])})")
    for n, text in enumerate(rows["text"]):
        yield f"{path.name}:{n}", text or ""


def _hf_saved(path: Path) -> Iterator[tuple[str, str]]:
    """A dataset written by ``datasets``' ``save_to_disk`` (a folder), or one of its ``.arrow`` files."""
    try:
        import datasets  # deferred: the [data] extra, for saved Hugging Face datasets only
    except ImportError:
        raise ConfigError(f"reading {path} needs the datasets package: pip install 'gauntlet[data]'") from None
    try:
        rows = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_file(str(path))
    except Exception as exc:  # datasets/pyarrow raise many types for unreadable data
        raise DataError(f"{path}: not a readable Hugging Face dataset: {exc}") from None
    if isinstance(rows, datasets.DatasetDict):
        rows = rows["train"] if "train" in rows else rows[next(iter(rows))]
    return _hf_rows(path, rows)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def _local(path: Path) -> Iterator[tuple[str, str]]:
    if _is_saved_dataset(path):
        yield from _hf_saved(path)
        return
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f.suffix == ".jsonl":
            yield from _jsonl(f)
        elif f.suffix == ".json":
            yield from _json(f)
        elif f.suffix == ".parquet":
            yield from _parquet(f)
        elif f.suffix == ".arrow":
            yield from _hf_saved(f)
        elif f.suffix in TEXT_SUFFIXES:
            yield f.relative_to(path).as_posix() if path.is_dir() else f.name, f.read_text("utf-8", errors="replace")


def _hub(spec: str) -> Iterator[tuple[str, str]]:
    name, _, split = spec.partition(":")
    try:
        from datasets import load_dataset  # deferred: the [data] extra, for hub datasets only
    except ImportError:
        raise ConfigError(f"data source hf:{spec} needs the datasets package: pip install 'gauntlet[data]'") from None
    try:
        rows = load_dataset(name, split=split or "train", streaming=True)
        for n, row in enumerate(rows):
            yield f"{name}:{n}", row.get("text") or ""
    except (ConnectionError, OSError, ValueError) as exc:
        raise DataError(f"data source hf:{spec}: the Hugging Face hub could not be read ({exc}). Offline? Download "
                        f"the files and point data.source at them (parquet, JSONL, .arrow or token shards)") from None


def iter_documents(source: str) -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` pairs of a source: ``stdlib``, a local path, or ``hf:NAME[:SPLIT]``."""
    if source == "stdlib":
        return _stdlib()
    if source.startswith("hf:"):
        return _hub(source[3:])
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"data source {source!r} is neither 'stdlib', 'hf:NAME', nor an existing path")
    return _local(path)
