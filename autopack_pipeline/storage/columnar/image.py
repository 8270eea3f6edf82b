"""The analysis arrays of a whole store kept beside its parts as ``.npy`` files (its "image"), so a later
process maps them instead of decoding every part again.

Decoding the parts is the whole cost of loading the arrays: at ten million events 0.65-0.75 s of wall and
~1.3 s of CPU on two cores, a third of it the kernel zeroing ~550 MB of fresh pages. A mapped image costs a
few milliseconds, and its pages come from the page cache as the analysis reads them. The arrays are mapped
copy-on-write (``mmap_mode="c"``): writing into one changes this process' copy, never the file.

The image costs the load that writes it almost nothing: the parts are decoded straight into its files
(:class:`ImageWriter` hands the decoder file-backed arrays instead of ``np.zeros``' fresh pages; the kernel
writes them to disk afterwards), and only an array made anew after the decoding (a narrowed or reordered
column) is saved apart. On disk it takes about 50 bytes per event (510 MB at ten million), beside the
Parquet parts' 12.

An image belongs to one state of the store: its directory is named by a digest of the manifest's parts
(each part's file, row count, size and modification time), so after a refresh that adds, compacts or
rebuilds parts no manifest names it. The next whole load writes the new state's and removes the others
then, not the refresh: removing 510 MB of files (the page cache's pages freed one by one) took 0.15 s at ten
million events, up to a third of what a refresh of 100k events takes, where that load decodes for ~0.7 s anyway.
It is written into a temporary directory renamed into place once complete: a reader sees a whole image or
none, and decodes the parts on anything unexpected (a file gone, a bad header).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.analysis.arrays import IntColumn, LabelColumn

logger = logging.getLogger("autopack_pipeline.storage.columnar")

IMAGE_PREFIX = "image-"
_IMAGE_FORMAT = 1
_CONTENTS = "image.json"  # written last: an image directory without it is not complete


def image_directory(directory: Path, manifest: dict[str, Any]) -> Path:
    """Where the image of ``manifest``'s state of the store lives (whether or not it exists). Each part is
    named by its file as it is on disk too (size, modification time): a store made again from scratch (its
    manifest deleted, say) numbers its parts from 1 again, and must not find the old parts' image."""
    parts = []
    for part in manifest["parts"]:
        found = os.stat(directory / part["file"])  # a part gone raises FileNotFoundError: choose again
        parts.append([part["file"], part["rows"], found.st_size, found.st_mtime_ns])
    state = {"format": _IMAGE_FORMAT, "source": manifest.get("source"), "rows": manifest["rows"],
             "sorted": manifest["sorted"], "parts": parts}
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:20]
    return directory / f"{IMAGE_PREFIX}{digest}"


def complete_image(directory: Path, manifest: dict[str, Any]) -> Path | None:
    """The image directory of ``manifest``'s state when that image is complete, else None."""
    path = image_directory(directory, manifest)
    return path if (path / _CONTENTS).exists() else None


def read_image(directory: Path, manifest: dict[str, Any]) -> EventArrays | None:
    """The arrays of ``manifest``'s state, mapped from its image; None when there is no complete image."""
    return _map_image(image_directory(directory, manifest), manifest["rows"])


def _map_image(path: Path, rows: int) -> EventArrays | None:
    """:func:`read_image` of the image at ``path``, which ``rows`` events must fill."""
    try:
        text = (path / _CONTENTS).read_text()
    except FileNotFoundError:
        return None  # none yet, or removed by a refresh since: the parts are decoded instead
    try:
        arrays = EventArrays(**{name: _mapped(path, entry) for name, entry in json.loads(text)["columns"].items()})
        if len(arrays) != rows:
            raise ValueError(f"{len(arrays)} rows, the manifest {rows}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Damaged (a file cut short or removed by hand): removed, so the next load writes it again.
        logger.warning("removing the damaged arrays image %s (%s): the parts are read instead", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return None
    return arrays


def remove_images(directory: Path, keep: str | None = None) -> None:
    """Remove every image of ``directory`` but ``keep`` (a process mapping one keeps its pages), and any
    left half-written by a process that has ended (killed while decoding)."""
    for path in directory.glob(f"{IMAGE_PREFIX}*"):
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
    remove_abandoned(directory, f".{IMAGE_PREFIX}*.tmp")  # .image-<digest>.<pid>.tmp (ImageWriter)


def remove_abandoned(directory: Path, pattern: str) -> None:
    """Remove the temporary directories matching ``pattern`` (named ``.<what>.<pid>.tmp``) of writers that
    have ended (killed while writing), never those of running ones."""
    for path in directory.glob(pattern):
        pid = path.name.split(".")[-2]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


class ImageWriter:
    """Writes the image of one state of the store while its parts are decoded: :meth:`zeros` makes the
    decoder's arrays in the image's files, :meth:`finish` completes the image and gives the arrays mapped
    from it. Nothing is left behind when it cannot be written (a full disk, a read-only directory): the
    arrays are then made in memory, and only the next load is slower."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory, self.rows = directory, manifest["rows"]
        self.final = image_directory(directory, manifest)
        self.temporary = directory / f".{self.final.name}.{os.getpid()}.tmp"
        self._files: dict[int, tuple[np.ndarray, str]] = {}  # id of each file-backed array: (it, its file)
        self._failed = False

    def zeros(self, name: str, rows: int, dtype: type) -> np.ndarray:
        """A zeroed array of ``rows`` in a file of the image (in memory once writing has failed)."""
        if not self._failed and rows:
            try:
                self.temporary.mkdir(exist_ok=True)
                file = self.temporary / f"{name}.npy"
                array = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=(rows,))
                # The file's blocks reserved now: a disk that fills up fails here, not as a SIGBUS when a page
                # of the map is first written.
                with open(file, "r+b") as handle:
                    os.posix_fallocate(handle.fileno(), 0, os.path.getsize(file))
                array = array.view(np.ndarray)  # np.memmap's subclass would travel into every slice
                self._files[id(array)] = (array, file.name)
                return array
            except OSError as exc:
                self._fail(exc)
        return np.zeros(rows, dtype=dtype)

    def finish(self, arrays: EventArrays) -> EventArrays:
        """The image completed from ``arrays`` (every part decoded) and put in place; the arrays mapped from it
        (``arrays`` themselves when it could not be written)."""
        if self._failed:
            return arrays
        try:
            if self._files and not self.temporary.is_dir():
                raise FileNotFoundError(f"{self.temporary} was removed while the parts were decoded into it")
            self.temporary.mkdir(exist_ok=True)
            columns = {field.name: self._entry(field.name, getattr(arrays, field.name))
                       for field in dataclasses.fields(EventArrays)}
            kept = {name for entry in columns.values() for name in (entry.get("file"), entry.get("valid")) if name}
            for path in self.temporary.iterdir():  # arrays the decoder made and then replaced
                if path.name not in kept:
                    path.unlink()
            (self.temporary / _CONTENTS).write_text(json.dumps({"columns": columns}))
            self._files.clear()
            if self.final.exists() and not (self.final / _CONTENTS).exists():
                shutil.rmtree(self.final, ignore_errors=True)  # not an image (one is renamed into place whole)
            self.temporary.rename(self.final)
        except OSError as exc:
            if not (self.final / _CONTENTS).exists():  # else another process put the same image in place first
                self._fail(exc)
                return arrays
            shutil.rmtree(self.temporary, ignore_errors=True)
        remove_images(self.directory, keep=self.final.name)
        mapped = _map_image(self.final, self.rows)  # the path named once, in __init__ (a stat per part)
        return arrays if mapped is None else mapped

    def discard(self) -> None:
        """Remove what was written (the decoding failed)."""
        self._files.clear()
        shutil.rmtree(self.temporary, ignore_errors=True)

    def _entry(self, name: str, column: Any) -> dict[str, Any]:
        """How one column of :class:`EventArrays` is kept: its file (saved now unless the decoder filled it)."""
        if column is None:
            return {"kind": "none"}
        if isinstance(column, LabelColumn):
            return {"kind": "labels", "file": self._file(name, column.codes), "labels": list(column.labels)}
        if isinstance(column, IntColumn):
            valid = None if column.valid is None else self._file(f"{name}.valid", column.valid)
            return {"kind": "ints", "file": self._file(name, column.values), "valid": valid}
        return {"kind": "array", "file": self._file(name, column)}

    def _file(self, name: str, array: np.ndarray) -> str:
        held = self._files.get(id(array))
        if held is not None and held[0] is array:
            return held[1]
        np.save(self.temporary / f"{name}.npy", array, allow_pickle=False)
        return f"{name}.npy"

    def _fail(self, exc: OSError) -> None:
        logger.warning("could not write the arrays image %s (%s): the next load decodes the parts again",
                       self.final, exc)
        self._failed = True
        self.discard()


def _mapped(path: Path, entry: dict[str, Any]) -> Any:
    """One column of :class:`EventArrays` mapped from its entry (:meth:`ImageWriter._entry`)."""
    kind = entry["kind"]
    if kind == "none":
        return None
    values = map_array(path / entry["file"])
    if kind == "labels":
        return LabelColumn(values, tuple(entry["labels"]))
    if kind == "ints":
        return IntColumn(values, map_array(path / entry["valid"]) if entry["valid"] else None)
    if kind == "array":
        return values
    raise ValueError(f"unknown column kind {kind!r}")


def map_array(file: Path) -> np.ndarray:
    """The array of a ``.npy`` file, mapped copy-on-write."""
    # A plain ndarray over the map (np.memmap's subclass would travel into every slice and pickle): the
    # view keeps the map alive as its base.
    return np.load(file, mmap_mode="c", allow_pickle=False).view(np.ndarray)
