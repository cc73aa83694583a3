"""Small file helpers shared by the modules that save things: atomic writes and clear errors.

Every file written through these helpers gets the ordinary mode of a new file (``0o666`` less
the process umask), not the ``0o600`` of :func:`tempfile.mkstemp`.

Tagged safetensors files (:func:`save_tagged_safetensors`, :func:`load_tagged_safetensors`):
a ``.safetensors`` file whose header's ``__metadata__`` holds ``format`` (what the file is, e.g.
``"tl_lape.ResidualMeans"``), ``version`` and ``checksum`` (:func:`tensors_checksum`:
``"sha256:..."`` of every tensor's name, dtype, shape and bytes and of every other header entry).
Loading checks all three, so a file of another kind, of another version or with any byte
changed is refused with a one-line :class:`~tl_lape.LapeError` naming the file.

Tagged JSON files (:func:`tagged_json_text`, :func:`check_tagged_json`; ``study.json``,
``evaluation.json``, ``steering.json``): the same three fields at the top of a JSON object, the
checksum (:func:`json_checksum`) taken over the object's canonical JSON. They are read with the
strict parser :func:`parse_json`.
"""

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_lape.errors import LapeError

__all__ = [
    "FOLDER_MARK",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT_DIGITS",
    "MAX_LAYERS",
    "MAX_WIDTH",
    "atomic_dir",
    "atomic_path",
    "atomic_paths",
    "check_output_file",
    "check_output_folder",
    "check_report_folder",
    "check_size",
    "check_tagged_json",
    "existing_file",
    "file_kind",
    "finite_json",
    "json_checksum",
    "json_text",
    "key_meaning",
    "load_tagged_safetensors",
    "parse_json",
    "save_tagged_safetensors",
    "tagged_json_text",
    "tensors_checksum",
    "written_by_tl_lape",
]


def _umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory, so :func:`os.replace` is atomic: a reader
    sees either the old file or the complete new one, never a half-written file. On any error
    the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("hello")
        >>> target.read_text()
        'hello'
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise LapeError(
            f"cannot write {str(target)!r}: its directory {str(directory)!r} does not exist; "
            "create the directory first or choose another path"
        )
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise _write_error(target, err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except _WRITE_ERRORS as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(target, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_errors() -> tuple[type[Exception], ...]:
    from safetensors import SafetensorError  # raised for an I/O error while serializing

    return (OSError, SafetensorError)


#: What a failed write raises: the OS's errors (a full disk: ``ENOSPC``) and safetensors'.
_WRITE_ERRORS = _write_errors()


def _write_error(target: Path, err: Exception) -> LapeError:
    """The one-line error of a write that failed (a full disk, a lost mount, ...)."""
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return LapeError(
        f"cannot write {str(target)!r} ({reason}); it was left as it was: free space (or fix "
        "the folder) and try again, or choose another path"
    )


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Like :func:`atomic_path` for several files: all are moved into place, or none.

    Each target's directory is checked before the block runs. The files are moved into place
    one after another only once the whole block has succeeded, so an error while writing any
    of them leaves every target untouched.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_paths([d / "a.txt", d / "b.txt"]) as (a, b):
        ...     _ = a.write_text("1"), b.write_text("2")
        >>> sorted(p.name for p in d.iterdir())
        ['a.txt', 'b.txt']
    """
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        yield tmps


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; its files appear in ``path`` only on success.

    On success: if ``path`` does not exist the temporary folder is renamed to it (one atomic
    step); otherwise each file written is moved onto ``path`` with :func:`os.replace`, after
    the whole block has succeeded, so no step of a long computation ever leaves a mix of new
    and old files. On any error (Ctrl-C included) the temporary folder is deleted and ``path``
    is left as it was. The folder gets tl_lape's mark, :data:`FOLDER_MARK`, so that a later run
    may write into it (:func:`check_report_folder`).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "report"
        >>> with atomic_dir(target) as tmp:
        ...     _ = (tmp / "summary.md").write_text("# report")
        >>> sorted(p.name for p in target.iterdir())
        ['.tl_lape', 'summary.md']
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise LapeError(
            f"cannot write the report folder {str(target)!r}: it is a file; remove it or choose "
            "another --out"
        )
    parent = target.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        (tmp / FOLDER_MARK).write_text(
            "This folder was written by tl_lape; a later run may write into it.\n",
            encoding="utf-8",
        )
        os.chmod(tmp / FOLDER_MARK, _umask_mode())
        tmp.chmod(_umask_mode(0o777))
        if not target.exists():
            os.replace(tmp, target)
            return
        for item in sorted(tmp.iterdir()):
            os.replace(item, target / item.name)
    except _WRITE_ERRORS as err:
        raise _write_error(target, err) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


#: The file :func:`atomic_dir` leaves in every folder it writes: it marks the folder as tl_lape's,
#: so a later run may write into it without ``overwrite=True``.
FOLDER_MARK = ".tl_lape"

#: A path the command reads, named for messages: ``(what, path)``, e.g. ``("statistics file", p)``.
Input = tuple[str, "str | os.PathLike[str] | None"]


def check_output_file(
    path: str | os.PathLike[str],
    what: str = "output file",
    *,
    overwrite: bool = False,
    inputs: Sequence[Input] = (),
) -> Path:
    """Check, before any work, that a file may be written at ``path``: the output rule.

    The rule (the same for every file and report folder tl_lape writes): the output is not one
    of the command's ``inputs`` (paths compared resolved, symbolic links followed; an output
    inside an input folder, such as a model folder, counts as the input); its last component
    is not a symbolic link (tl_lape replaces files by renaming, which would replace the link,
    not the file it points to: give the link's target instead); and an existing non-empty file
    that tl_lape did not write (:func:`written_by_tl_lape`) is replaced only with
    ``overwrite=True``.

    Raises:
        LapeError: ``path`` breaks the rule, is an existing directory, its folder does not
            exist or is a file, or no file can be created in it.

    Example:
        >>> try:
        ...     check_output_file(tempfile.mkdtemp())
        ... except LapeError as err:
        ...     print("it is a directory" in str(err))
        True
    """
    p = Path(path)
    _check_not_a_link(p, what)
    _check_not_an_input(p, what, inputs)
    if p.is_dir():
        raise LapeError(
            f"cannot write {what} {str(p)!r}: it is a directory; give a file name such as "
            f"{str(p / 'out')!r}"
        )
    if not p.is_file() and (reason := _not_a_file(p)) is not None:
        raise LapeError(
            f"cannot write {what} {str(p)!r}: {reason}, which writing would replace; give "
            "the path of a regular file"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise LapeError(
            f"cannot write {what} {str(p)!r}: its folder {str(parent)!r} does not exist; "
            "create the folder first or choose another path"
        )
    check_output_folder(parent, what=f"{what} {str(p)!r}")
    _check_overwrite(overwrite)
    if not overwrite and p.is_file() and p.stat().st_size > 0 and not written_by_tl_lape(p):
        raise LapeError(
            f"cannot write {what} {str(p)!r}: a file that tl_lape did not write is there "
            f"({p.stat().st_size:,} bytes); choose another path, or pass overwrite=True "
            "(--overwrite on the command line) to replace it"
        )
    return p


def check_output_folder(folder: str | os.PathLike[str], what: str = "output") -> Path:
    """Check that ``folder`` is, or can be created as, a writable folder (nothing is created).

    Raises:
        LapeError: a file stands where the folder or one above it should be, or the nearest
            existing folder is not writable.
    """
    f = Path(folder) if str(folder) else Path(".")
    existing = f
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise LapeError(
            f"cannot write {what}: {str(existing)!r} is a file, not a folder; choose another path"
        )
    if existing.is_dir():
        # A real probe (a file created and deleted at once): permission bits say nothing for
        # root, read-only mounts or virtual file systems such as /proc.
        try:
            fd, probe = tempfile.mkstemp(prefix=".tl_lape-probe.", dir=existing)
        except OSError as err:
            raise LapeError(
                f"cannot write {what}: no file can be created in the folder {str(existing)!r} "
                f"({err.strerror or err}); choose another path"
            ) from None
        os.close(fd)
        os.unlink(probe)
    return f


def check_report_folder(
    folder: str | os.PathLike[str], *, overwrite: bool = False, inputs: Sequence[Input] = ()
) -> Path:
    """Check that a report folder may be written: the output rule of :func:`check_output_file`
    (an existing non-empty folder without tl_lape's mark, :data:`FOLDER_MARK`, needs
    ``overwrite=True``; an input may not be the folder or lie inside it), not a file, and
    creatable or writable (nothing is created). The commands and :func:`tl_lape.run_demo`
    call it before any work."""
    out = Path(folder)
    what = f"the report folder {str(out)!r}"
    _check_not_a_link(out, "the report folder")
    _check_not_an_input(out, "the report folder", inputs)
    if out.exists() and not out.is_dir():
        raise LapeError(
            f"cannot write {what}: it is a file; remove it or give another output folder "
            "(--out on the command line)"
        )
    check_output_folder(out, what)
    _check_overwrite(overwrite)
    if not overwrite and out.is_dir() and not (out / FOLDER_MARK).is_file():
        items = sorted(p.name for p in out.iterdir())
        if items:
            shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
            raise LapeError(
                f"cannot write {what}: it holds files that tl_lape did not write ({shown}); "
                "give a new or empty folder, or pass overwrite=True (--overwrite on the command "
                "line) to write the report among them"
            )
    return out


def _check_overwrite(overwrite: Any) -> None:
    if not isinstance(overwrite, bool):
        raise LapeError(f"overwrite must be True or False; received {overwrite!r}")


def _check_not_a_link(path: Path, what: str) -> None:
    if path.is_symlink():
        raise LapeError(
            f"cannot write {what} {str(path)!r}: it is a symbolic link (to "
            f"{os.readlink(path)!r}); tl_lape does not write through links: give the path it "
            f"points to, {str(path.resolve())!r}, or another path"
        )


def _check_not_an_input(path: Path, what: str, inputs: Sequence[Input]) -> None:
    """Refuse an output that is an input, lies inside an input folder or holds an input."""
    out = path.resolve()
    for name, given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source:
            how = f"is the input {name} {str(given)!r} (both resolve to {str(source)!r})"
        elif source in out.parents:
            how = f"lies inside the input {name} {str(given)!r} (the folder {str(source)!r})"
        elif out in source.parents:
            how = f"holds the input {name} {str(given)!r} (resolved: {str(source)!r})"
        else:
            continue
        raise LapeError(
            f"cannot write {what} {str(path)!r}: it {how}, which writing would destroy; "
            "choose another output path"
        )


def written_by_tl_lape(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` is one tl_lape writes: a safetensors file whose header's
    ``format`` starts with ``"tl_lape."``, a JSON document whose ``"format"`` does, or a small
    ``.neuron.pth`` file in the LAPE paper's format (read with ``weights_only=True``).

    Example:
        >>> import pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = p.write_text("my notes")
        >>> written_by_tl_lape(p)
        False
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) >= 8:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= min(size - 8, 1 << 24) and head[8:9] == b"{":
            with open(p, "rb") as f:
                f.seek(8)
                header = f.read(n)
            return re.search(rb'"format"\s*:\s*"tl_lape\.', header) is not None
    if head.lstrip()[:1] == b"{":
        return re.search(rb'^\s*\{\s*"format"\s*:\s*"tl_lape\.', head) is not None
    if head[:4] == b"PK\x03\x04" and size <= 1 << 26:
        try:
            data = torch.load(p, weights_only=True, map_location="cpu")
        except Exception:  # any unreadable file is simply not ours
            return False
        return (
            isinstance(data, list)
            and all(isinstance(row, list) for row in data)
            and all(
                isinstance(t, Tensor) and not t.is_floating_point() for row in data for t in row
            )
        )
    return False


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, or raise :class:`LapeError` if it is no file.

    Example:
        >>> try:
        ...     existing_file("/no/such/file", "statistics file")
        ... except LapeError as err:
        ...     print(str(err)[:52])
        cannot read statistics file '/no/such/file': no such
    """
    if not isinstance(path, (str, os.PathLike)):
        raise LapeError(
            f"the {what} must be given as a path (a str or pathlib.Path); received a "
            f"{type(path).__name__}: {repr(path)[:60]}"
        )
    p = Path(path)
    if not p.is_file():
        reason = _not_a_file(p) or "no such file"
        raise LapeError(
            f"cannot read {what} {str(p)!r}: {reason}; check the path (it was resolved against "
            f"the working directory {os.getcwd()!r})"
        )
    return p


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """What a file is, from its first bytes, for the message of a loader that cannot read it as
    the kind it expected: a zip (such as the LAPE paper's ``.neuron.pth``), a safetensors file or
    a JSON document, with its tl_lape format tag when it has one; None when not recognised.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "n.json"
        >>> _ = p.write_text('{"format": "tl_lape.LanguageNeurons", "version": 1}')
        >>> file_kind(p)
        'a JSON document of format tl_lape.LanguageNeurons'
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    tag = re.search(rb'"format"\s*:\s*"([\w.:-]{1,80})"', head)
    of = f" of format {tag.group(1).decode()}" if tag else ""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, such as the LAPE paper's .neuron.pth (LanguageNeurons.from_rucaibox)"
    if head[8:10] in (b'{"', b"{}"):
        return f"a safetensors file{of}"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return f"a JSON document{of}"
    return None


def _not_a_file(p: Path) -> str | None:
    """What stands at ``p`` if it exists and is not a regular file (None otherwise): reading a
    FIFO would wait for a writer forever, and renaming a file onto a device replaces it."""
    if p.is_dir():
        return "it is a directory"
    if p.is_symlink():
        try:
            p.stat()
        except FileNotFoundError:
            return f"it is a symbolic link to {os.readlink(p)!r}, which does not exist"
        except OSError as err:  # a loop of links
            return f"it is a symbolic link that cannot be followed ({err.strerror or err})"
    for test, kind in (
        (p.is_fifo, "a named pipe (FIFO)"),
        (p.is_char_device, "a character device"),
        (p.is_block_device, "a block device"),
        (p.is_socket, "a socket"),
    ):
        try:
            if test():
                return f"it is {kind}, not a regular file"
        except OSError:  # a symbolic-link loop, a name too long
            break
    try:
        p.stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"it cannot be opened ({err.strerror or err})"
    return None


# --------------------------------------------------------------------------- tagged safetensors


def tensors_checksum(tensors: Mapping[str, Tensor], header: Mapping[str, str] | None = None) -> str:
    """``"sha256:..."`` of each tensor's name, dtype, shape and bytes (in name order), then of
    the ``header`` entries (in key order; a ``"checksum"`` entry is left out).

    Without ``header`` it is the checksum :class:`~tl_lape.ActivationStats` files record.

    Example:
        >>> tensors_checksum({"x": torch.zeros(2)})[:7]
        'sha256:'
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if header is not None:
        entries = {key: header[key] for key in sorted(header) if key != "checksum"}
        digest.update(b"header|" + json.dumps(entries, ensure_ascii=False).encode())
    return "sha256:" + digest.hexdigest()


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    *,
    fsync: bool = False,
) -> None:
    """Write a safetensors file whose bytes depend only on ``tensors`` and ``metadata``.

    ``safetensors`` keeps the metadata in a hash map, so the order of its header entries (and
    the file's bytes) can change from one process to the next; here the header is rewritten with
    the metadata keys sorted, so the same content always gives the same file. ``path`` is
    written directly: callers wrap it in :func:`atomic_path`.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_safetensors(d / "a", {"x": torch.ones(2)}, {"b": "1", "a": "2"})
        >>> write_safetensors(d / "b", {"x": torch.ones(2)}, {"a": "2", "b": "1"})
        >>> (d / "a").read_bytes() == (d / "b").read_bytes()
        True
    """
    from safetensors.torch import save

    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    raw = save(cpu, metadata=dict(metadata))
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    ordered: dict[str, Any] = {"__metadata__": dict(sorted(header["__metadata__"].items()))}
    for name in sorted(entries, key=lambda k: (entries[k]["data_offsets"][0], k)):
        ordered[name] = entries[name]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(raw[8 + size :])
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def save_tagged_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    *,
    tag: str,
    version: int | str,
    header: Mapping[str, str],
    fsync: bool = False,
) -> None:
    """Write ``tensors`` with ``header`` plus ``format``, ``version`` and ``checksum``, atomically.

    Args:
        path: The file; its folder must exist.
        tensors: The tensors (written contiguous, from the CPU).
        tag: The format tag (the header's ``format``), e.g. ``"tl_lape.ResidualMeans"``.
        version: The format version.
        header: Further string entries of the header.
        fsync: Flush the file to disk before it replaces ``path`` (for checkpoints, whose
            previous version must survive a crash).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.safetensors"
        >>> save_tagged_safetensors(p, {"x": torch.ones(2)}, tag="demo", version=1, header={})
        >>> load_tagged_safetensors(p, what="demo file", tag="demo", version=1)[0]["x"]
        tensor([1., 1.])
    """
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    full = {**header, "format": tag, "version": str(version)}
    full["checksum"] = tensors_checksum(cpu, full)
    with atomic_path(path) as tmp:
        write_safetensors(tmp, cpu, full, fsync=fsync)


def load_tagged_safetensors(
    path: str | os.PathLike[str],
    *,
    what: str,
    tag: str,
    version: int | str,
    advice: str = "write it again",
    required: Collection[str] = (),
    legacy_keys: Collection[str] | None = None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by :func:`save_tagged_safetensors`, checking tag, version and checksum.

    Args:
        path: The file.
        what: What it should be, for messages (e.g. ``"residual-means file"``).
        tag: The expected format tag (the header's ``format``).
        version: The version this tl_lape reads.
        advice: What the user should do if the file is refused (ends every message).
        required: Tensors the file must hold.
        legacy_keys: A header with exactly these keys is a file written before the format tag
            existed: it is read without the tag, version and checksum checks.

    Returns:
        ``(tensors, header)``, on the CPU; ``header`` without ``format``, ``version`` and
        ``checksum``.

    Raises:
        LapeError: The file is missing, unreadable, of another format or version, lacks a
            required tensor, or its checksum differs (a damaged file); one line, naming the file.
    """
    from safetensors import safe_open

    p = existing_file(path, what)
    name = repr(str(p))
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for a damaged file
        kind = file_kind(p)
        if kind is not None and not kind.startswith("a safetensors"):
            raise LapeError(f"{name} is {kind}, not a {what}; give the path of a {what}") from None
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise LapeError(f"{name} is not a readable {what} ({reason}); {advice}") from None
    legacy = legacy_keys is not None and set(header) == set(legacy_keys)
    if not legacy:
        if header.get("format") != tag:
            raise LapeError(
                f"{name} is not a tl_lape {what} (format {header.get('format')!r}, expected "
                f"{tag!r}); {advice}"
            )
        if header.get("version") != str(version):
            raise LapeError(
                f"{name} is a {what} of version {header.get('version')!r}; this tl_lape reads "
                f"version {version}; {advice}"
            )
        expected = header.get("checksum")
        found = tensors_checksum(tensors, header)
        if expected != found:
            raise LapeError(
                f"{name} is damaged: the checksum of its content is {found}, but its header "
                f"records {expected!r}; restore it from a copy or {advice}"
            )
    missing = sorted(set(required) - set(tensors))
    if missing:
        raise LapeError(f"{name} is a damaged {what}: it lacks the tensors {missing}; {advice}")
    for key in ("format", "version", "checksum"):
        header.pop(key, None)
    return tensors, header


def finite_json(value: Any) -> Any:
    """A copy of a JSON-like value with every NaN or infinite float replaced by None.

    JSON has no NaN or Infinity (Python writes them, other readers refuse them); a result that
    is not a finite number is written as ``null``. Reports say why next to it.

    Example:
        >>> finite_json({"a": [1.0, float("nan")], "b": float("inf")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def json_text(value: Any, *, indent: int | None = 1) -> str:
    """The one JSON writer of tl_lape's reports: non-finite numbers become ``null``, so the
    text is always valid JSON; non-ASCII text is kept as is.

    Example:
        >>> json_text({"x": float("nan")}, indent=None)
        '{"x": null}'
    """
    return json.dumps(finite_json(value), indent=indent, ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------- strict JSON

#: Deepest nesting of arrays and objects a JSON document tl_lape reads may have.
MAX_JSON_DEPTH = 64
#: Most digits of an integer in a JSON document tl_lape reads (2**64 has 20).
MAX_JSON_INT_DIGITS = 24
#: Most layers a file may declare (``n_layers``): no model comes near it; it bounds what a
#: small, hostile file can make a reader allocate.
MAX_LAYERS = 4096
#: Most neurons per layer (``d_mlp``) or residual width (``d_model``) a file may declare.
MAX_WIDTH = 1 << 20


def key_meaning(key: str) -> str:
    """What a JSON object key means, for :func:`parse_json`'s same-meaning check: a key of
    ASCII digits means its number (``"03"`` is ``"3"``), any other key its Unicode NFC form.

    Example:
        >>> key_meaning("03"), key_meaning("e\\u0301")
        ('3', 'é')
    """
    if key.isascii() and key.isdigit():
        return str(int(key))
    return unicodedata.normalize("NFC", key)


def parse_json(text: str | bytes, *, where: str, advice: str) -> Any:
    """The one strict JSON reader of tl_lape: every JSON document it reads goes through here.

    Refused, with one :class:`~tl_lape.LapeError` line naming ``where``, what was wrong, the
    value found and ``advice``: text that is not JSON; a key given twice in one object, or two
    keys of the same meaning (:func:`key_meaning`: ``"3"`` and ``"03"``); nesting deeper than
    :data:`MAX_JSON_DEPTH`; an integer of more than :data:`MAX_JSON_INT_DIGITS` digits;
    ``NaN``, ``Infinity`` and numbers that overflow to infinity.

    Args:
        text: The document.
        where: What it is, for messages (e.g. ``"the neuron-set file 'x.json'"``).
        advice: What the user should do (ends every message).

    Example:
        >>> parse_json('{"a": [1, 2]}', where="x", advice="fix it")
        {'a': [1, 2]}
        >>> try:
        ...     parse_json('{"3": [], "03": []}', where="x", advice="fix it")
        ... except LapeError as err:
        ...     print(err)
        x is not valid: the keys '3' and '03' of one object mean the same; fix it
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LapeError(
                f"{where} is not valid JSON (corrupted or truncated?): it is not UTF-8 text "
                f"(byte {err.start}: "
                f"{err.object[err.start : err.start + 1]!r}); {advice}"
            ) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_strict_object,
            parse_int=_strict_int,
            parse_float=_strict_float,
            parse_constant=_no_constant,
        )
        _check_depth(value)
        return value
    except _StrictJsonError as err:
        raise LapeError(f"{where} is not valid: {err}; {advice}") from None
    except RecursionError:  # nesting deeper than Python's recursion limit
        raise LapeError(
            f"{where} is not valid: it nests arrays or objects more than {MAX_JSON_DEPTH} deep "
            f"(thousands of levels); {advice}"
        ) from None
    except (json.JSONDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise LapeError(
            f"{where} is not valid JSON (corrupted or truncated?): {reason}; {advice}"
        ) from None


class _StrictJsonError(ValueError):
    pass


def _check_depth(value: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH` (iteratively: no recursion limit).
    Deeper text than Python's recursion limit never gets here: the parser raises first."""
    level = [value]
    for _ in range(MAX_JSON_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return
    raise _StrictJsonError(f"it nests arrays or objects more than {MAX_JSON_DEPTH} deep")


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    meanings: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise _StrictJsonError(f"the key {key!r} appears twice in one object")
        meaning = key_meaning(key)
        if meaning in meanings:
            raise _StrictJsonError(
                f"the keys {meanings[meaning]!r} and {key!r} of one object mean the same"
            )
        meanings[meaning] = key
        out[key] = value
    return out


def _strict_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _StrictJsonError(
            f"it holds an integer of {len(digits.lstrip('-'))} digits ({digits[:12]}...), more "
            f"than the {MAX_JSON_INT_DIGITS} allowed"
        )
    return int(digits)


def _strict_float(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise _StrictJsonError(f"it holds the number {digits[:30]}, too large for a float")
    return value


def _no_constant(name: str) -> Any:
    raise _StrictJsonError(f"it holds {name}, which is not JSON (a number must be finite)")


def check_size(value: Any, name: str, most: int) -> int:
    """A size field read from a file (``n_layers``, ``d_mlp``, a width), checked against its
    stated limit (:data:`MAX_LAYERS`, :data:`MAX_WIDTH`) before anything is allocated from it.
    The caller adds the file's name and what to do.

    Example:
        >>> try:
        ...     check_size(10**12, '"d_mlp"', MAX_WIDTH)
        ... except LapeError as err:
        ...     print(err)
        "d_mlp" is 1000000000000, more than the 1048576 this format allows
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LapeError(f"{name} must be a positive integer; received {value!r}")
    if value > most:
        raise LapeError(f"{name} is {value}, more than the {most} this format allows")
    return value


# --------------------------------------------------------------------------- tagged JSON


def json_checksum(doc: Mapping[str, Any]) -> str:
    """``"sha256:..."`` of a JSON object without its ``"checksum"`` key, in canonical JSON (keys
    sorted, no spaces, ASCII): the checksum of tl_lape's JSON files.

    Example:
        >>> a = json_checksum({"b": 1, "a": [1.5]})
        >>> a == json_checksum({"a": [1.5], "b": 1, "checksum": "sha256:0"}), a[:7]
        (True, 'sha256:')
    """
    body = {k: v for k, v in doc.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def tagged_json_text(doc: Mapping[str, Any], *, tag: str, version: int) -> str:
    """The text of a tagged JSON file: ``doc`` after ``"format": tag`` and ``"version"``, then
    ``"checksum"`` (:func:`json_checksum` of what the file holds, non-finite numbers written as
    ``null`` by :func:`json_text`). :func:`check_tagged_json` verifies it.

    Example:
        >>> text = tagged_json_text({"x": [1.0, float("nan")]}, tag="demo", version=1)
        >>> doc = parse_json(text, where="demo", advice="-")
        >>> check_tagged_json(doc, where="demo", tag="demo", version=1, advice="-")
        {'x': [1.0, None]}
    """
    body = {k: v for k, v in doc.items() if k not in ("format", "version", "checksum")}
    full = {"format": tag, "version": version, **body}
    full = json.loads(json_text(full, indent=None))  # exactly what a reader will see
    full["checksum"] = json_checksum(full)
    return json_text(full)


def check_tagged_json(
    doc: Any, *, where: str, tag: str, version: int, advice: str
) -> dict[str, Any]:
    """A JSON object written by :func:`tagged_json_text`, verified, without its ``format``,
    ``version`` and ``checksum``; else one :class:`~tl_lape.LapeError` line naming ``where``.

    An object with none of the three fields was written before tl_lape tagged this kind of
    file: it is returned as it is, and the caller checks its content as for any other.

    Example:
        >>> text = tagged_json_text({"x": 7}, tag="demo", version=1).replace("7", "8")
        >>> try:
        ...     check_tagged_json(parse_json(text, where="f", advice="-"), where="f",
        ...                       tag="demo", version=1, advice="write it again")
        ... except LapeError as err:
        ...     print(str(err)[:40])
        f is damaged: the checksum of its conten
    """
    if not isinstance(doc, dict):
        raise LapeError(
            f"{where} holds a {type(doc).__name__}, not a JSON object: {repr(doc)[:60]}; {advice}"
        )
    if not {"format", "version", "checksum"} & set(doc):
        return dict(doc)
    if doc.get("format") != tag:
        raise LapeError(
            f'{where} is not a {tag} document: expected "format": {tag!r}, found '
            f"{repr(doc.get('format'))[:60]}; {advice}"
        )
    if doc.get("version") != version or isinstance(doc.get("version"), bool):
        raise LapeError(
            f"{where} has {tag} format version {repr(doc.get('version'))[:30]}; this tl_lape "
            f"reads version {version}; upgrade tl_lape or {advice}"
        )
    try:
        found = json_checksum(doc)
    except (TypeError, ValueError) as err:  # a hand-made dict of values JSON cannot hold
        raise LapeError(f"{where} holds a value that is not JSON ({err}); {advice}") from None
    expected = doc.get("checksum")
    if found != expected:
        raise LapeError(
            f"{where} is damaged: the checksum of its content is {found}, but it records "
            f"{repr(expected)[:80]}; restore it from a copy or {advice}"
        )
    return {k: v for k, v in doc.items() if k not in ("format", "version", "checksum")}
