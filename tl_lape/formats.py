"""Small file helpers shared by the modules that save things: atomic writes and clear errors.

Every file written through these helpers gets the ordinary mode of a new file (``0o666`` less
the process umask), not the ``0o600`` of :func:`tempfile.mkstemp`.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tl_lape.errors import LapeError

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_paths",
    "check_output_file",
    "check_output_folder",
    "existing_file",
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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    is left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "report"
        >>> with atomic_dir(target) as tmp:
        ...     _ = (tmp / "summary.md").write_text("# report")
        >>> [p.name for p in target.iterdir()]
        ['summary.md']
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
        tmp.chmod(_umask_mode(0o777))
        if not target.exists():
            os.replace(tmp, target)
            return
        for item in sorted(tmp.iterdir()):
            os.replace(item, target / item.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Check, before any work, that a file can be written at ``path``.

    Raises:
        LapeError: ``path`` is an existing directory, its folder does not exist or is a file,
            or no file can be created in it.

    Example:
        >>> try:
        ...     check_output_file(tempfile.mkdtemp())
        ... except LapeError as err:
        ...     print("it is a directory" in str(err))
        True
    """
    p = Path(path)
    if p.is_dir():
        raise LapeError(
            f"cannot write {what} {str(p)!r}: it is a directory; give a file name such as "
            f"{str(p / 'out')!r}"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise LapeError(
            f"cannot write {what} {str(p)!r}: its folder {str(parent)!r} does not exist; "
            "create the folder first or choose another path"
        )
    check_output_folder(parent, what=f"{what} {str(p)!r}")
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


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, or raise :class:`LapeError` if it is no file.

    Example:
        >>> try:
        ...     existing_file("/no/such/file", "statistics file")
        ... except LapeError as err:
        ...     print(str(err)[:52])
        cannot read statistics file '/no/such/file': no such
    """
    p = Path(path)
    if not p.is_file():
        reason = "it is a directory" if p.is_dir() else "no such file"
        raise LapeError(
            f"cannot read {what} {str(p)!r}: {reason}; check the path (it was resolved against "
            f"the working directory {os.getcwd()!r})"
        )
    return p
