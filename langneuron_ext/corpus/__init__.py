"""Corpus -> batches: text sources (files, JSONL, the Debian handbook) and batching."""
from .sources import CorpusError, Document, JsonlSource, MixedSource, PlainTextFiles, TextSource
from .handbook import DebianHandbook, Paragraph, available_languages, handbook_available
from .batching import Batch, iter_batches, total_tokens

__all__ = [
    "Batch",
    "CorpusError",
    "DebianHandbook",
    "Document",
    "JsonlSource",
    "MixedSource",
    "Paragraph",
    "PlainTextFiles",
    "TextSource",
    "available_languages",
    "handbook_available",
    "iter_batches",
    "total_tokens",
]
