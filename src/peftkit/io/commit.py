"""Replacing several files of one directory as a single commit: a killed save leaves the old set or the new one.

PEFT's file names are fixed (``adapter_config.json`` beside ``adapter_model.safetensors``), so the pair cannot
be swapped by one rename. A save therefore runs in steps, and one atomic rename, that of the journal, is the
commit point::

    1. stage    write every new file as ``.peftkit-tmp-<id>-<name>`` beside its final name (flushed to disk)
    2. commit   write the journal ``.peftkit-commit.json`` (``{"replace": {name: staged}, "remove": [names]}``)
                to a staged file and rename it into place
    3. apply    remove the key file (the first one, the config), rename the others into place, remove the
                files listed for removal, rename the key file into place
    4. finish   delete the journal

Killed before step 2, the directory holds the previous files (plus staged leftovers); from step 2 on, the save
has happened: :func:`committed_file`, which every peftkit load goes through, reads a staged file where the
journal lists one, so a load sees all the new files; a loader that knows nothing of the journal (the reference
``peft``) finds no key file during step 3 and fails loudly instead of pairing new weights with an old config.
The next write into the directory (:func:`recover`) finishes a committed save and deletes leftovers of
uncommitted ones. Writers of one directory take turns: each holds an exclusive ``flock`` on the directory itself
(no lock file is left behind) from its first step to its last, so two processes saving into one directory (two
ranks that both believe they are the main one) give the one or the other complete set, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: writers are not serialised
    fcntl = None  # type: ignore[assignment]

#: Prefix of staged files; anything with it that no journal lists is a leftover of a killed save.
STAGED_PREFIX = ".peftkit-tmp-"
#: The journal whose appearance commits a save.
JOURNAL_NAME = ".peftkit-commit.json"
#: Staged files of earlier peftkit versions (``.tmp-<random><name>``) for these names are leftovers too.
_LEGACY_NAMES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "adapter_checkpoint.json")


def commit_files(
    directory: str | os.PathLike, writes: dict[str, Callable[[str], None]], remove: Sequence[str] = ()
) -> None:
    """Replace the files named in ``writes`` and delete those in ``remove``, all in ``directory``, as one commit.

    Args:
        directory: Created if needed; a committed but unfinished save found there is finished first.
        writes: ``{file name: write}``; ``write(path)`` produces the file's content at ``path``. The first
            name is the key file (a loader cannot load without it): it is removed first and renamed in last.
        remove: File names to delete in the same commit (e.g. a weights file of the other format).

    Raises:
        Whatever a ``write`` raises; the directory then holds the previous files and no staged ones.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with _exclusive(directory):
        _commit(directory, writes, remove)


def _commit(directory: str, writes: dict[str, Callable[[str], None]], remove: Sequence[str]) -> None:
    recover(directory)
    staged: dict[str, str] = {}
    try:
        for name, write in writes.items():
            staged[name] = _staged_name(name)
            write(os.path.join(directory, staged[name]))
            _flush(os.path.join(directory, staged[name]))
        journal = {"replace": staged, "remove": [n for n in remove if n not in staged]}
        _write_journal(directory, journal)
    except BaseException:
        for name in staged.values():
            _remove(os.path.join(directory, name))
        raise
    _apply(directory, journal)


def commit_file(directory: str | os.PathLike, name: str, write: Callable[[str], None]) -> None:
    """Replace one file of ``directory`` atomically (one rename: no journal needed); leftovers are cleaned."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with _exclusive(directory):
        recover(directory)
        staged = os.path.join(directory, _staged_name(name))
        try:
            write(staged)
            _flush(staged)
            os.replace(staged, os.path.join(directory, name))
        except BaseException:
            _remove(staged)
            raise


@contextlib.contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` (blocking until other writers of it finish). Where the
    platform or file system cannot lock a directory, writers are not serialised."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_journal(directory: str, journal: dict[str, Any]) -> None:
    """Write the journal to a staged file and rename it into place: the commit point."""
    staged = os.path.join(directory, _staged_name(JOURNAL_NAME))
    try:
        with open(staged, "w", encoding="utf-8") as fh:
            json.dump(journal, fh)
        _flush(staged)
        os.replace(staged, os.path.join(directory, JOURNAL_NAME))
    except BaseException:
        _remove(staged)
        raise
    _flush_directory(directory)


def _apply(directory: str, journal: dict[str, Any]) -> None:
    """Steps 3 and 4; safe to repeat after a kill at any point: each step does only what is left to do."""
    replace: dict[str, str] = journal["replace"]
    names = list(replace)
    key_staged = bool(names) and os.path.exists(os.path.join(directory, replace[names[0]]))
    if key_staged:
        _remove(os.path.join(directory, names[0]))
    for name in names[1:]:
        _rename(os.path.join(directory, replace[name]), os.path.join(directory, name))
    for name in journal["remove"]:
        _remove(os.path.join(directory, name))
    if key_staged:
        _rename(os.path.join(directory, replace[names[0]]), os.path.join(directory, names[0]))
    _remove(os.path.join(directory, JOURNAL_NAME))
    _flush_directory(directory)


def _rename(staged: str, final: str) -> None:
    try:
        os.replace(staged, final)
    except FileNotFoundError:  # already renamed (by a repeat of this step)
        pass


def _read_journal(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, JOURNAL_NAME), encoding="utf-8") as fh:
            journal = json.load(fh)
    except FileNotFoundError:
        return None
    return journal if isinstance(journal, dict) and isinstance(journal.get("replace"), dict) else None


def recover(directory: str | os.PathLike) -> None:
    """Finish a committed save left unfinished in ``directory`` and delete the staged leftovers of killed ones."""
    directory = os.fspath(directory)
    journal = _read_journal(directory)
    if journal is not None:
        _apply(directory, journal)
    elif os.path.exists(os.path.join(directory, JOURNAL_NAME)):  # unreadable: it was never a committed journal
        _remove(os.path.join(directory, JOURNAL_NAME))
    for entry in os.listdir(directory):
        legacy = entry.startswith(".tmp-") and entry.endswith(_LEGACY_NAMES)
        if legacy or (entry.startswith(STAGED_PREFIX) and not _writer_alive(entry)):
            _remove(os.path.join(directory, entry))


def _staged_name(name: str) -> str:
    """``.peftkit-tmp-<pid>-<random>-<name>``: the writer's process id tells a leftover from a live save."""
    return f"{STAGED_PREFIX}{os.getpid()}-{uuid.uuid4().hex}-{name}"


def _writer_alive(entry: str) -> bool:
    """Whether the process that staged ``entry`` still runs (then it is another writer's save in progress, e.g.
    another rank's, and must not be removed); this process's own staged files are never leftovers either."""
    pid = entry[len(STAGED_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def committed_file(directory: str | os.PathLike, name: str) -> str | None:
    """The path that holds the committed content of file ``name`` of ``directory``, or ``None`` if it has none.

    Normally ``directory/name``; while a committed save is unfinished, the staged file the journal lists (or
    ``None`` for a file the save removes).
    """
    directory = os.fspath(directory)
    journal = _read_journal(directory)
    if journal is not None:
        staged = journal["replace"].get(name)
        if staged is not None and os.path.isfile(os.path.join(directory, staged)):
            return os.path.join(directory, staged)
        if name in journal.get("remove", ()):
            return None
    path = os.path.join(directory, name)
    return path if os.path.isfile(path) else None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _flush(path: str) -> None:
    """Push a written file to disk, so that a rename after it never exposes an empty file after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
