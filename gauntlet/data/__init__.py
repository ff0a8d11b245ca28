"""Datasets and tokenizers: an offline default corpus, local files or hub datasets, prepared into
memory-mapped shards of fixed-length token sequences."""

from gauntlet.data.shards import TokenDataset, dataset_key, open_dataset, prepare
from gauntlet.data.sources import iter_documents
from gauntlet.data.tokenizer import ByteTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "TokenDataset", "dataset_key", "iter_documents", "load_tokenizer", "open_dataset",
           "prepare"]
