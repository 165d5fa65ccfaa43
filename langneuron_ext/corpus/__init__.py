"""Corpus -> batches: text sources (files, JSONL, the Debian handbook) and batching."""
from .batching import Batch, total_tokens
from .bos import bos_token_id
from .handbook import DebianHandbook, Paragraph, available_languages, handbook_available
from .shards import Position, ShardedBatches, iter_batches
from .sources import CorpusError, Document, JsonlSource, MixedSource, PlainTextFiles, TextSource

__all__ = [
    "Batch",
    "CorpusError",
    "DebianHandbook",
    "Document",
    "JsonlSource",
    "MixedSource",
    "Paragraph",
    "PlainTextFiles",
    "Position",
    "ShardedBatches",
    "TextSource",
    "available_languages",
    "bos_token_id",
    "handbook_available",
    "iter_batches",
    "total_tokens",
]
