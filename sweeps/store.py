"""Checkpoints of a sweep's trials, keyed by trial id, on any filesystem pyarrow supports.

Layout under ``<storage>/<sweep>/trials/<trial_id>/``::

    checkpoint_0000100.pt   the newest engine checkpoints (``keep`` of them)
    meta.json               written last: which checkpoint is newest + the trial's history so far
    final.pt                the one checkpoint a finished trial keeps (the others are removed)
    killed                  fault-injection marker (tests)

``<storage>`` is a local folder or a URI (``s3://``, ``gs://``, ``file://``, ...). A trial that
starts finds its newest checkpoint here whatever Tune run, driver or node started it before, so
an unfinished trial of a re-run sweep continues where it stopped. Only JSON and
``torch.load(weights_only=True)`` checkpoints are read back: nothing is unpickled.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Optional

from detector.config import ConfigError

META = "meta.json"
FINAL = "final.pt"
# A sweep's name is one plain folder name: it never reaches outside <storage>/ or <results>/.
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_sweep_name(name: str) -> str:
    """``name`` if it is a plain identifier (letters, digits, ``_ . -``, first a letter or digit);
    ConfigError naming it otherwise (no path separator, no ``..``, not empty)."""
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"--name {name!r}: a sweep's name is a plain identifier (letters, digits, '_', '.', '-', "
                          "starting with a letter or digit; no '/', no '..'): it names the sweep's own folders")
    return name


def inside(root: str, path: str) -> bool:
    """Whether ``path`` lies strictly inside ``root`` (both normalised, POSIX paths)."""
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    return path != root and path.startswith(root.rstrip("/") + "/")


def _filesystem(storage: str):
    """(pyarrow filesystem, root path inside it) for a local folder or a URI."""
    import pyarrow.fs as pafs

    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), str(Path(storage).resolve())


def uri_of(storage: str, path: str) -> str:
    """The URI a user can open for ``path`` inside ``storage``'s filesystem."""
    if "://" in storage:
        scheme = storage.split("://", 1)[0]
        return f"{scheme}://{path}" if scheme != "file" else f"file://{path}"
    return path


class TrialStore:
    """Checkpoints and markers of the trials of one sweep (see module doc)."""

    def __init__(self, storage: str, sweep: str, keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep={keep}: at least the newest checkpoint is kept")
        self.storage, self.sweep, self.keep = storage, check_sweep_name(sweep), keep
        self.fs, self.base = _filesystem(storage)
        self.root = posixpath.join(self.base, sweep)

    def _dir(self, trial_id: str) -> str:
        return posixpath.join(self.root, "trials", trial_id)

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _write_bytes(self, path: str, data: bytes) -> None:
        """Write via a temporary name and move into place (readers never see a partial file)."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = path + ".tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def _upload(self, local: str, path: str) -> None:
        self._write_bytes(path, Path(local).read_bytes())

    def _download(self, path: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(path) as f:
            local.write_bytes(f.read())
        return local

    # ------------------------------------------------------------ checkpoints
    def meta(self, trial_id: str) -> Optional[dict]:
        path = posixpath.join(self._dir(trial_id), META)
        if not self._exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def save(self, trial_id: str, local_checkpoint: str, meta: dict) -> str:
        """Store ``local_checkpoint`` as the trial's newest; ``meta`` (JSON) names it. Returns its URI."""
        d = self._dir(trial_id)
        name = Path(local_checkpoint).name
        self._upload(local_checkpoint, posixpath.join(d, name))
        old = self.meta(trial_id) or {}
        kept = [n for n in old.get("checkpoints", []) if n != name] + [name]
        self._write_bytes(posixpath.join(d, META),
                          json.dumps({**meta, "checkpoint_file": name, "checkpoints": kept[-self.keep:]}).encode())
        for stale in kept[:-self.keep]:
            self._delete_file(posixpath.join(d, stale))
        return uri_of(self.storage, posixpath.join(d, name))

    def stored_uri(self, trial_id: str, name: str) -> str:
        """The URI of a stored file of the trial (what an error names, never a local copy)."""
        return uri_of(self.storage, posixpath.join(self._dir(trial_id), name))

    def candidates(self, trial_id: str) -> tuple:
        """(meta or None, stored checkpoint names newest first); a meta.json that does not parse is
        a ValueError naming its stored path."""
        try:
            meta = self.meta(trial_id)
        except ValueError as e:
            raise ValueError(f"{self.stored_uri(trial_id, META)} does not parse: {e}") from e
        if not meta or not meta.get("checkpoint_file"):
            return meta, []
        names = [meta["checkpoint_file"]] + [n for n in reversed(meta.get("checkpoints", []))
                                             if n != meta["checkpoint_file"]]
        return meta, names

    def fetch(self, trial_id: str, name: str, local_dir: Path) -> Path:
        """A local copy of one stored checkpoint (FileNotFoundError naming its stored path)."""
        try:
            return self._download(posixpath.join(self._dir(trial_id), name), Path(local_dir) / name)
        except (FileNotFoundError, OSError) as e:
            raise FileNotFoundError(f"{self.stored_uri(trial_id, name)} cannot be read: {e}") from e

    def latest(self, trial_id: str, local_dir: Path) -> tuple:
        """(local copy of the newest checkpoint or None, meta or None)."""
        meta = self.meta(trial_id)
        if not meta or not meta.get("checkpoint_file"):
            return None, meta
        name = meta["checkpoint_file"]
        return self._download(posixpath.join(self._dir(trial_id), name), Path(local_dir) / name), meta

    def final_uri(self, trial_id: str) -> str:
        return uri_of(self.storage, posixpath.join(self._dir(trial_id), FINAL))

    def finish(self, trial_id: str, local_checkpoint: Optional[str], meta: dict) -> Optional[str]:
        """Keep one checkpoint, the final one (if any), and the final meta. Returns its URI."""
        d = self._dir(trial_id)
        uri = None
        old = self.meta(trial_id) or {}
        stored = list(old.get("checkpoints", []))
        if local_checkpoint:
            name = Path(local_checkpoint).name
            if name in stored and self._exists(posixpath.join(d, name)):  # already uploaded: move it
                self.fs.move(posixpath.join(d, name), posixpath.join(d, FINAL))
                stored.remove(name)
            else:
                self._upload(local_checkpoint, posixpath.join(d, FINAL))
            uri = self.final_uri(trial_id)
        for name in stored:
            self._delete_file(posixpath.join(d, name))
        self._write_bytes(posixpath.join(d, META), json.dumps(
            {**meta, "checkpoint_file": FINAL if uri else None, "checkpoints": []}, default=str).encode())
        return uri

    def _delete_file(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    # ------------------------------------------------------------ markers and clean-up
    def marker(self, trial_id: str, name: str) -> Optional[str]:
        path = posixpath.join(self._dir(trial_id), name)
        if not self._exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def set_marker(self, trial_id: str, name: str, text: str) -> None:
        self._write_bytes(posixpath.join(self._dir(trial_id), name), text.encode())

    def trial_ids(self) -> list:
        import pyarrow.fs as pafs

        d = posixpath.join(self.root, "trials")
        if not self._exists(d):
            return []
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(pafs.FileSelector(d))
                      if i.type == pafs.FileType.Directory)

    def _resolved(self, path: str) -> str:
        """``path`` with symbolic links resolved on a local filesystem (a URI's path as is)."""
        import os

        import pyarrow.fs as pafs

        return os.path.realpath(path) if isinstance(self.fs, pafs.LocalFileSystem) else path

    def delete_all(self) -> None:
        """Everything of this sweep in storage (checkpoints, markers, Ray's own run folders), and
        nothing outside it: the folder deleted must lie inside the storage root."""
        if not inside(self._resolved(self.base), self._resolved(self.root)):
            raise ConfigError(f"refusing to delete {self.root}: not inside the storage root {self.base}")
        if self._exists(self.root):
            self.fs.delete_dir(self.root)
