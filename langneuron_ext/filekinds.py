"""What kind of file a path holds, from its first bytes, so that a file given in the wrong
place is named for what it is ("a neuron set JSON, not a stats file") instead of a decoder's
message ("Error while deserializing header: header too large")."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional

FOLDER, STATS, JSON, TORCH, EMPTY = ("a folder", "a langneuron stats file (safetensors)",
                                     "a JSON file", "a torch file", "an empty file")


def kind_of(path: str | os.PathLike) -> Optional[str]:
    """FOLDER, STATS (safetensors), JSON, TORCH (a zip or pickle), EMPTY, or None (unknown or
    missing)."""
    path = Path(path)
    if path.is_dir():
        return FOLDER
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if not head:
        return EMPTY
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1:
        return STATS        # safetensors: 8-byte header length, then a JSON header
    if head.lstrip()[:1] in (b"{", b"["):
        return JSON
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return TORCH        # torch.save: a zip archive (new) or a pickle (old)
    return None


def wrong_kind(path, expected: str, writer: str) -> Optional[str]:
    """A one-line reason when `path` is a folder or another known kind of file than `expected`
    (one of the kinds above); `writer` names the command that writes the expected file. None
    when the file may be of the expected kind."""
    kind = kind_of(path)
    if kind is None or kind == expected:
        return None
    if kind == FOLDER:
        return f"{path} is a folder, not {expected}; give the file written by {writer}"
    hint = {
            STATS: "a neuron set is made from it by `langneuron identify STATS --method lape "
                   "--out neurons.json`",
            JSON: "a neuron set, NLL or alignment result?",
            TORCH: "a released mask? `langneuron compare` reads those",
            EMPTY: "was it written completely?"}[kind]
    return f"{path} is {kind}, not {expected} ({hint}); give the file written by {writer}"
