import json

import pytest
import torch

from gauntlet.config import DataConfig, ModelConfig
from gauntlet.data import ByteTokenizer, TokenDataset, iter_documents, load_tokenizer, prepare
from gauntlet.data.sources import is_validation
from gauntlet.errors import ConfigError
from gauntlet.models import PRESETS, build_model, mean_loss
from gauntlet.uniqueness import assigned_indices, own_eval_indices

HK_A = "5DJ3SyKbetjtJ1xWZAnuBvdjJP6J4JnDqcR3h7kRx9QnjamY"
HK_B = "5HL5AWUc4JchNnzgZuNrEa5uX4cRaZqUm53xPDBksXHrbKP2"


# ------------------------------------------------------------------------------------ assignment


def test_assignment_is_pinned_by_its_documented_hash():
    assert assigned_indices(0, HK_A, 7, 5, 232204) == [82259, 54750, 220234, 67716, 77433]
    assert own_eval_indices([82259, 54750, 220234, 67716, 77433], 2, 0, 7) == [67716, 82259]


def test_assignment_differs_by_hotkey_window_and_seed_and_is_reproducible():
    base = assigned_indices(0, HK_A, 7, 240, 10_000)
    assert base == assigned_indices(0, HK_A, 7, 240, 10_000)
    assert len(set(base)) == 240 and all(0 <= i < 10_000 for i in base)
    for other in (assigned_indices(0, HK_B, 7, 240, 10_000), assigned_indices(0, HK_A, 8, 240, 10_000),
                  assigned_indices(1, HK_A, 7, 240, 10_000)):
        assert len(set(base) & set(other)) < 30  # independent draws overlap by ~240²/10⁴ ≈ 6


def test_validator_own_data_sample_is_always_within_the_assignment():
    assigned = assigned_indices(3, HK_B, 11, 240, 232_204)
    sample = own_eval_indices(assigned, 8, 3, 11)
    assert len(set(sample)) == 8 and set(sample) <= set(assigned)


def test_assignment_refuses_impossible_requests():
    with pytest.raises(ValueError):
        assigned_indices(0, HK_A, 0, 11, 10)
    assert sorted(assigned_indices(0, HK_A, 0, 10, 10)) == list(range(10))


# ------------------------------------------------------------------------------------------ data


def test_stdlib_corpus_is_deterministic_and_split_by_document():
    docs = []
    for n, doc in enumerate(iter_documents("stdlib")):
        docs.append(doc[0])
        if n == 50:
            break
    assert docs == sorted(docs) and all(d.endswith(".py") for d in docs)
    assert is_validation("abc.py", 0.05) == is_validation("abc.py", 0.05)
    share = sum(is_validation(f"doc{i}", 0.05) for i in range(20_000)) / 20_000
    assert 0.04 < share < 0.06


def test_prepare_local_jsonl_and_text_files_into_memory_mapped_sequences(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(json.dumps({"text": f"document number {i} " * 20}) for i in range(200)))
    (src / "b.txt").write_text("plain text file " * 100)
    cfg = DataConfig(source=str(src), seq_len=32, val_fraction=0.1)
    root = prepare(cfg, tmp_path / "cache")
    assert prepare(cfg, tmp_path / "cache") == root  # cached
    train, val = TokenDataset(root, "train"), TokenDataset(root, "val")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["documents"] == 201 and meta["seq_len"] == 32 and meta["tokenizer"] == "bytes"
    assert len(train) > len(val) > 0
    batch = train.batch([0, len(train) - 1])
    assert batch.shape == (2, 32) and batch.dtype == torch.int64 and int(batch.max()) < 256
    text = ByteTokenizer().decode(train.batch([0])[0].tolist())
    assert "document number" in text or "plain text" in text
    with pytest.raises(IndexError):
        train.batch([len(train)])


def test_bpe_tokenizer_is_trained_once_and_cached(tmp_path):
    texts = [f"def function_{i}(x):\n    return x * {i}\n" for i in range(300)]
    tok = load_tokenizer("bpe:320", tmp_path, texts, "corpus-1")
    assert tok.vocab_size <= 320 and tok.eos_id is not None
    ids = tok.encode_batch(["def function_7(x):"])[0]
    assert tok.decode(ids) == "def function_7(x):" and len(ids) < len("def function_7(x):")
    again = load_tokenizer("bpe:320", tmp_path, None, "corpus-1")  # no corpus needed: cached
    assert again.encode_batch(["def function_7(x):"])[0] == ids


@pytest.mark.parametrize("source, fragment", [
    ("/no/such/path", "neither"), ("hf:some/dataset", "datasets"),
])
def test_unusable_sources_raise_config_errors(tmp_path, monkeypatch, source, fragment):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as on an offline machine without it
    with pytest.raises(ConfigError, match=fragment):
        prepare(DataConfig(source=source), tmp_path)


def test_too_small_corpus_and_bad_tokenizers_are_explained(tmp_path):
    (tmp_path / "tiny.txt").write_text("x")
    with pytest.raises(ConfigError, match="too small"):
        prepare(DataConfig(source=str(tmp_path / "tiny.txt"), seq_len=64), tmp_path / "c")
    with pytest.raises(ConfigError, match="bpe:VOCAB"):
        load_tokenizer("bpe:lots", tmp_path)


# ---------------------------------------------------------------------------------------- models


def test_presets_are_seeded_identical_and_tiny_has_a_few_million_parameters():
    a = build_model(ModelConfig(preset="tiny", device="cpu"), 256, 64, seed=5)
    b = build_model(ModelConfig(preset="tiny", device="cpu"), 256, 64, seed=5)
    c = build_model(ModelConfig(preset="tiny", device="cpu"), 256, 64, seed=6)
    assert 3_000_000 < sum(p.numel() for p in a.parameters()) < 4_000_000
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    loss = mean_loss(a, [torch.randint(0, 256, (2, 64))])
    assert 5.0 < loss < 6.5  # ≈ ln 256 for an untrained model
    assert set(PRESETS) == {"tiny", "small", "150M", "1B"}


def test_local_pretrained_models_load_and_unknown_ones_explain(tmp_path):
    model = build_model(ModelConfig(preset="tiny", device="cpu"), 256, 64, seed=0)
    model.save_pretrained(tmp_path / "export")
    loaded = build_model(ModelConfig(preset=str(tmp_path / "export"), device="cpu"), 256, 64, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters()))
    with pytest.raises(ConfigError, match="not a preset"):
        build_model(ModelConfig(preset=str(tmp_path / "missing")), 256, 64, seed=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            build_model(ModelConfig(preset="tiny", device="cuda"), 256, 64, seed=0)


def test_a_hugging_face_tokenizer_directory_is_usable(tmp_path):
    from transformers import PreTrainedTokenizerFast

    texts = [f"class Thing{i}:\n    pass\n" for i in range(200)]
    bpe = load_tokenizer("bpe:300", tmp_path / "cache", texts, "c")
    PreTrainedTokenizerFast(tokenizer_object=bpe._tok, eos_token="<|endoftext|>").save_pretrained(tmp_path / "hf")
    tok = load_tokenizer(str(tmp_path / "hf"), tmp_path / "cache")
    assert tok.encode_batch(["class Thing7:"]) == bpe.encode_batch(["class Thing7:"])
    assert tok.eos_id == bpe.eos_id and tok.vocab_size == bpe.vocab_size
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"doc{i}.txt").write_text("".join(texts[i:i + 20]))
    root = prepare(DataConfig(source=str(src), tokenizer=str(tmp_path / "hf"), seq_len=16), tmp_path / "data")
    train = TokenDataset(root, "train")
    assert train.vocab_size == bpe.vocab_size and int(train.batch(list(range(len(train)))).max()) < bpe.vocab_size
