"""Real training data: pre-tokenised shards read in place, parquet and Hugging Face files, the
`gauntlet data` command, and assignment over a 10¹⁰-token corpus."""

import json

import numpy as np
import pytest
import torch

from gauntlet.config import DataConfig, InnerConfig, ModelConfig
from gauntlet.data import open_dataset
from gauntlet.errors import ConfigError, DataError
from gauntlet.models import build_model
from gauntlet.uniqueness import assigned_indices, own_eval_indices
from peers.cli import main
from peers.node.training import InnerTrainer

SEQ = 16


def train_a_window(train, steps: int = 2) -> float:
    """A peer's window in miniature: a few inner steps on assigned sequences of the dataset."""
    model = build_model(ModelConfig(preset="tiny", device="cpu"), train.vocab_size, SEQ, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    idx = assigned_indices(0, "peer", 0, 4 * steps, len(train))
    loss = InnerTrainer(model, InnerConfig(lr=1e-3, warmup_steps=1), bf16=False).train(
        list(train.batch(idx).split(4)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return loss


def test_nanogpt_bin_files_are_read_in_place_with_their_val_file(tmp_path):
    tokens = np.arange(50 * SEQ, dtype=np.uint16) % 300
    tokens.tofile(tmp_path / "train.bin")
    np.arange(10 * SEQ, dtype=np.uint16).tofile(tmp_path / "val.bin")
    train, val = open_dataset(DataConfig(source=str(tmp_path), seq_len=SEQ, vocab_size=300), tmp_path / "cache")
    assert (len(train), len(val), train.vocab_size) == (50, 10, 300)
    assert train.batch([3]).tolist() == [tokens[3 * SEQ:4 * SEQ].astype(int).tolist()]
    assert not (tmp_path / "cache").exists()  # nothing tokenised, nothing copied
    assert np.isfinite(train_a_window(train))


def test_llmc_shards_npy_shards_and_a_split_without_val_files(tmp_path):
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, 40 * SEQ]
    with open(tmp_path / "fineweb_train_000001.bin", "wb") as fh:
        fh.write(header.tobytes() + (np.arange(40 * SEQ) % 500).astype("<u2").tobytes())
    np.save(tmp_path / "more.npy", (np.arange(20 * SEQ) % 500).astype(np.uint32))
    train, val = open_dataset(DataConfig(source=str(tmp_path), seq_len=SEQ, vocab_size=500, val_fraction=0.1),
                              tmp_path / "cache")
    assert (len(train), len(val)) == (54, 6)  # 60 sequences, the last 10 % held out
    assert val.batch([5]).tolist() == [((np.arange(19 * SEQ, 20 * SEQ)) % 500).tolist()]
    assert np.isfinite(train_a_window(train))


@pytest.mark.parametrize("case, match", [
    ("truncated-bin", "truncated shard"),
    ("truncated-llmc", "header declares"),
    ("truncated-npy", "truncated"),
    ("dtype-vocab", "cannot hold a vocabulary"),
    ("no-vocab", "set data.vocab_size"),
    ("npy-2d", "expected a 1-D uint16/uint32 array"),
    ("llmc-version", "version 7 is not supported"),
])
def test_unusable_shards_raise_a_data_error_naming_the_file(tmp_path, case, match):
    vocab = 70000 if case == "dtype-vocab" else None if case == "no-vocab" else 300
    if case == "truncated-bin":
        (tmp_path / "train.bin").write_bytes(np.arange(99, dtype=np.uint16).tobytes()[:-1])
    elif case == "truncated-llmc":
        header = np.zeros(256, dtype="<i4")
        header[:3] = [20240520, 1, 1000]
        (tmp_path / "train.bin").write_bytes(header.tobytes() + np.zeros(999, dtype="<u2").tobytes())
    elif case == "truncated-npy":
        np.save(tmp_path / "train.npy", np.zeros(1000, dtype=np.uint32))
        data = (tmp_path / "train.npy").read_bytes()
        (tmp_path / "train.npy").write_bytes(data[:-100])
    elif case == "npy-2d":
        np.save(tmp_path / "train.npy", np.zeros((10, SEQ), dtype=np.uint16))
    elif case == "llmc-version":
        header = np.zeros(256, dtype="<i4")
        header[:3] = [20240520, 7, 100]
        (tmp_path / "train.bin").write_bytes(header.tobytes() + np.zeros(100, dtype="<u2").tobytes())
    else:
        np.zeros(100 * SEQ, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(DataError, match=match) as info:
        open_dataset(DataConfig(source=str(tmp_path), seq_len=SEQ, vocab_size=vocab), tmp_path / "cache")
    assert case == "no-vocab" or "train." in str(info.value)


def test_a_token_outside_the_vocabulary_is_named_with_its_file_when_read(tmp_path):
    tokens = np.zeros(20 * SEQ, dtype=np.uint16)
    tokens[5 * SEQ + 3] = 400
    tokens.tofile(tmp_path / "train.bin")
    train, _ = open_dataset(DataConfig(source=str(tmp_path), seq_len=SEQ, vocab_size=300), tmp_path / "c")
    train.batch([0, 1])
    with pytest.raises(DataError, match=r"train\.bin: token id 400 at token 83 is outside the vocabulary of 300"):
        train.batch([5])


def test_parquet_and_saved_hugging_face_datasets_prepare_and_train(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 8 for i in range(100)]
    pq.write_table(pa.table({"text": texts, "id": list(range(100))}), tmp_path / "docs.parquet")
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict({"text": texts}).to_json(str(tmp_path / "lines.json"))  # JSON lines
    (tmp_path / "array.json").write_text(json.dumps([{"text": t} for t in texts]))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for source in (tmp_path / "docs.parquet", tmp_path / "saved", arrow, tmp_path / "lines.json",
                   tmp_path / "array.json"):
        train, val = open_dataset(DataConfig(source=str(source), seq_len=SEQ, val_fraction=0.2), tmp_path / "cache")
        assert train.vocab_size == 256 and len(train) > 50 and len(val) > 0
        assert np.isfinite(train_a_window(train))
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "fine"}, {"body": "no text here"}]))
    with pytest.raises(DataError, match=r"bad\.json: item 1 needs a string field 'text'"):
        open_dataset(DataConfig(source=str(tmp_path / "bad.json"), seq_len=SEQ), tmp_path / "cache")
    (tmp_path / "broken.json").write_text('[{"text": "cut off')
    with pytest.raises(DataError, match=r"broken\.json is not valid JSON"):
        open_dataset(DataConfig(source=str(tmp_path / "broken.json"), seq_len=SEQ), tmp_path / "cache")
    pq.write_table(pa.table({"content": texts}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: parquet file has no 'text' column \(columns: content\)"):
        open_dataset(DataConfig(source=str(tmp_path / "bad.parquet"), seq_len=SEQ), tmp_path / "cache")


def test_a_hub_dataset_offline_says_what_to_do(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the packages read these at import; an earlier test may have imported them already
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if hasattr(datasets.config, "HF_HUB_OFFLINE"):
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(DataError, match="Offline\\? Download the files"):
        open_dataset(DataConfig(source="hf:someone/not-here", seq_len=SEQ), tmp_path / "cache")


def test_data_prepare_then_inspect_then_train_in_place(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"note {i}: " + "lorem ipsum dolor sit amet " * 6}) + "\n"
                            for i in range(80)))
    out = tmp_path / "shards"
    assert main(["data", "prepare", str(docs), "--out", str(out), "--seq-len", str(SEQ),
                 "--data-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert f"train on it with: --set data.path={out}" in printed
    identity = printed.split("identity (data.sha256 in a run manifest): ")[1].split()[0]
    assert not list(tmp_path.glob(".prepare-*"))  # the temporary folder was renamed into place
    assert main(["data", "inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "meta.json").read_text())
    assert info["vocab_size"] == meta["vocab_size"] == 256 and info["tokenizer"] == "bytes" and info["seq_len"] == SEQ
    assert info["tokens"] == sum(s["seqs"] for split in meta["splits"].values() for s in split) * SEQ
    assert info["sequences"] == info["tokens"] // SEQ
    assert info["max_token_id"] == max(map(ord, "note 0123456789: lorem ipsum dolor sit amet"))  # 'u' (bytes)
    assert main(["data", "inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checksum"] == info["checksum"]
    train, val = open_dataset(DataConfig(path=str(out), seq_len=SEQ, sha256=identity), tmp_path / "unused")
    assert (len(train) + len(val)) * SEQ == info["tokens"] and train.vocab_size == 256
    assert np.isfinite(train_a_window(train))
    with pytest.raises(DataError, match="prepared with a 256-token vocabulary"):
        open_dataset(DataConfig(source=str(out), seq_len=SEQ, vocab_size=1000), tmp_path / "unused")


def test_prepare_refuses_a_folder_in_use_and_leaves_nothing_half_written(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert main(["data", "prepare", "stdlib", "--out", str(used)]) == 1
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(json.dumps({"text": "too short"}) + "\n")
    with pytest.raises(ConfigError, match="too small"):
        from gauntlet.data import prepare

        prepare(DataConfig(source=str(tiny), seq_len=512), tmp_path / "cache", target=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".prepare-*"))


def test_inspect_reports_a_token_outside_the_given_vocabulary(tmp_path, capsys):
    np.array([1, 2, 999], dtype=np.uint16).tofile(tmp_path / "train.bin")
    assert main(["data", "inspect", str(tmp_path / "train.bin"), "--vocab-size", "500", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["problem"] == "token id 999 is outside the vocabulary of 500"


def test_a_ten_billion_token_corpus_is_assigned_and_read_in_o_of_what_is_assigned(tmp_path):
    with open(tmp_path / "train.bin", "wb") as fh:  # a sparse file: 10¹⁰ uint16 tokens, no disk used
        fh.truncate(2 * 10**10)
    np.zeros(4 * SEQ, dtype=np.uint16).tofile(tmp_path / "val.bin")
    train, _ = open_dataset(DataConfig(source=str(tmp_path), seq_len=SEQ, vocab_size=50257), tmp_path / "cache")
    assert len(train) == 10**10 // SEQ
    first = assigned_indices(7, "5F" + "a" * 46, 12, 4096, len(train))
    assert first == assigned_indices(7, "5F" + "a" * 46, 12, 4096, len(train))
    assert len(set(first)) == 4096 and max(first) < len(train) and max(first) > len(train) // 2
    own = own_eval_indices(first, 8, 7, 12)
    assert set(own) <= set(first) and len(own) == 8
    assert train.batch(own).shape == (8, SEQ)
