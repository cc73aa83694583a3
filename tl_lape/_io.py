"""Small file helpers shared by the modules that save things: atomic writes and clear errors."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tl_lape.errors import LapeError

__all__ = ["atomic_path", "existing_file"]


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
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
