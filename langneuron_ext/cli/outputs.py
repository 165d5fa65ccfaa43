"""Where a verb writes, checked before any model loads, and results kept when the write fails.

`check_outputs(inputs=..., files=..., dirs=...)` is the one check every writing verb calls
before loading anything. It refuses, with a one-line `CliError` that says what to do:

- an output that is one of the verb's inputs, or resolves to one (symlinks, hard links);
- an output folder holding an input under a name the verb writes there (the optional third
  item of a `dirs` entry lists those names; a folder that merely holds the inputs is fine,
  e.g. `langneuron report neurons.json --out-dir .`);
- two outputs that are the same file;
- a file output that is a folder or not a regular file (`--out /dev/null` would be replaced
  by the atomic rename), or whose folder cannot be created (a file in the way);
- an output folder that is a file or cannot be created;
- a place where a temporary file cannot really be created and removed: `os.access` answers
  "writable" for root even under `/proc` or a read-only mount, so the check writes one.

Missing output folders are created (they are needed for the test file, and the verb writes
there next anyway).

`keep_result(path, save, option)` writes a finished result with `save(path)`; when that fails
(disk full, folder removed, permissions changed during a long run) it saves the same result
beside it, in the current folder or in the temporary folder, and raises a `CliError` that says
where the result is and how to put it in place: a finished computation is never lost to the
last write.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Sequence, Tuple

from . import CliError


def _fail(message: str):
    raise CliError(message)


def _same_file(a: Path, b: Path) -> bool:
    """`a` and `b` name one file: equal after resolving symlinks, or one inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inputs(inputs: Iterable) -> List[Path]:
    return [Path(p) for p in inputs if p is not None and str(p) != ""]


def _try_write(folder: Path, option: str, shown: Path) -> None:
    """Create and remove a real temporary file in `folder` (os.access lies to root)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".langneuron-write-check-")
    except OSError as exc:
        _fail(f"cannot write in {folder} ({exc.strerror or exc}); choose another {option} than "
              f"{shown}")
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:
        _fail(f"cannot remove a test file {name} in {folder} ({exc.strerror or exc}); choose "
              f"another {option} than {shown}")


def _make_folder(folder: Path, option: str, shown: Path, what: str) -> None:
    """Create `folder` (and its parents); a file in the way or a place that refuses is one
    line naming the option."""
    for part in (folder, *folder.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                _fail(f"{option} {shown}: {part} is a file, not a folder; choose another "
                      f"{option}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create {what} {folder} of {option} {shown} ({exc.strerror or exc}); "
              f"choose another {option}")


def check_outputs(*, inputs: Iterable = (), files: Iterable[Tuple[str, object]] = (),
                  dirs: Iterable[Sequence] = ()) -> None:
    """Refuse outputs that would destroy an input or cannot be written; see the module text.

    inputs: paths the verb reads (None ignored). files: `(option, path or None)` per output
    file. dirs: `(option, path or None)` or `(option, path or None, names)` per output folder,
    `names` the file names the verb writes directly in it.
    """
    sources = _inputs(inputs)
    seen: List[Tuple[str, Path]] = []
    for option, path in files:
        if path is None:
            continue
        out = Path(path)
        if out.is_dir():
            _fail(f"{option} {out} is a folder; give a file name inside it, e.g. "
                  f"{out / 'result.json'}")
        if out.exists() and not stat.S_ISREG(out.stat().st_mode):
            _fail(f"{option} {out} is not a regular file (a device, pipe or socket) and would "
                  f"be replaced; give a file name")
        for source in sources:
            if _same_file(out, source):
                _fail(f"{option} {out} is the input {source}; writing would destroy it, give "
                      f"another {option}")
        for other_option, other in seen:
            if _same_file(out, other):
                _fail(f"{option} and {other_option} are both {out}; give two different files")
        seen.append((option, out))
        parent = out.parent if str(out.parent) else Path(".")
        _make_folder(parent, option, out, "the folder")
        _try_write(parent, option, out)
    for entry in dirs:
        option, path = entry[0], entry[1]
        names = tuple(entry[2]) if len(entry) > 2 else ()
        if path is None:
            continue
        out = Path(path)
        if out.exists() and not out.is_dir():
            _fail(f"{option} {out} is a file; give a folder (it is created when missing)")
        for source in sources:
            if _same_file(out, source):
                _fail(f"{option} {out} is the input {source}; give another folder")
            if (source.name in names and source.parent.exists() and out.exists()
                    and _same_file(source.parent, out)):
                _fail(f"{option} {out} holds the input {source}, which this command writes "
                      f"there as {source.name}; give another folder or move the input")
        for other_option, other in seen:
            if other.parent.exists() and out.exists() and _same_file(other.parent, out) \
                    and other.name in names:
                _fail(f"{other_option} {other} is a file that {option} {out} also writes; give "
                      f"another name")
        _make_folder(out, option, out, "the folder")
        _try_write(out, option, out)


def rescue_places(path: Path) -> List[Path]:
    """Where a result that cannot be written to `path` goes instead, in order: beside it, the
    current folder, the temporary folder."""
    name = f"{path.stem}.unsaved-{os.getpid()}{path.suffix}"
    places = [path.with_name(name), Path.cwd() / name, Path(tempfile.gettempdir()) / name]
    return list(dict.fromkeys(places))


def keep_result(path, save: Callable[[Path], object], option: str = "--out",
                what: str = "result") -> Path:
    """`save(path)`; when writing fails, `save` the same result to the first of
    `rescue_places(path)` that works and raise a one-line `CliError` naming it. Returns path."""
    path = Path(path)
    try:
        save(path)
        return path
    except OSError as exc:
        error = exc
    for place in rescue_places(path):
        try:
            save(place)
        except OSError:
            continue
        _fail(f"cannot write {option} {path} ({error.strerror or error}); the finished {what} "
              f"is kept, safe in {place}: move it into place (e.g. mv {place} {path})")
    _fail(f"cannot write {option} {path} ({error.strerror or error}), nor a copy beside it, in "
          f"{Path.cwd()} or in {tempfile.gettempdir()}; free some space and run the command "
          f"again")


def keep_json(path, data, option: str = "--out", what: str = "result") -> Path:
    """`keep_result` for a JSON result written with `options.write_json`."""
    from .options import write_json
    return keep_result(path, lambda p: write_json(p, data), option, what)


def corpus_inputs(args) -> List[str]:
    """The files the corpus options of `options.add_corpus_options` read (--text LANG=PATH,
    --jsonl, --dataset FILE or LANG=FILE, --parallel): inputs no output may replace."""
    paths: List[str] = []
    for item in getattr(args, "text", None) or []:
        paths.append(str(item).partition("=")[2].strip() or str(item))
    for item in getattr(args, "dataset", None) or []:
        item = str(item)
        paths.append(item if os.path.exists(item) else item.partition("=")[2].strip() or item)
    paths += [getattr(args, "jsonl", None), getattr(args, "parallel", None)]
    return [p for p in paths if p]


__all__ = ["check_outputs", "corpus_inputs", "keep_result", "keep_json", "rescue_places"]
