"""Every file and folder sta writes is written here, one way.

Outputs are built under a temporary name next to their target and published by a rename that never
replaces what it did not check:
- a new folder is renamed into place only if nothing is there (Linux `renameat2(RENAME_NOREPLACE)`;
  elsewhere a check and a rename under a lock file that every sta writer takes);
- `force` replaces only a folder sta wrote (see `io.artifact.sta_kind`) or an empty one, never the
  current folder or one of its parents, and swaps it under the lock;
- files added to an existing sta folder replace one of sta's own files only with `force`.
Temporary names carry the writer's host and pid: the next writer in the same folder removes those of
dead processes, and nothing ever reads one as a result. Permissions follow the umask.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import StaError

TMP_SUFFIX = ".sta-tmp"
LOCK_SUFFIX = ".sta-lock"
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
_TMP_NAME = re.compile(
    r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]+" + re.escape(TMP_SUFFIX) + "$"
)


# --- strict JSON ------------------------------------------------------------------------------------


def jsonable(obj):
    """Plain JSON values: dataclasses as dicts, paths as strings, NaN and infinities as null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return jsonable(obj.item())
    return str(obj)


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259: no NaN) for every file and every --json output."""
    return json.dumps(jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_json(path: Path, obj) -> None:
    """A JSON file inside a folder being written (a temporary folder, so no rename of its own)."""
    Path(path).write_text(dumps(obj) + "\n")


def write_text(path: Path, text: str) -> None:
    """Replace a file of a folder this process holds (`exclusive`) in one step: readers see the old
    or the new contents, never a part."""
    path = Path(path)
    tmp = tmp_path(path.parent, path.name)
    try:
        tmp.write_text(text)
        apply_umask(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise _oserror(path, e) from None
    finally:
        _remove(tmp)


# --- permissions, temporary names, stale leftovers --------------------------------------------------------


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Normal permissions for everything under `path` (mkdtemp, mkstemp and some writers use 0600)."""
    mask = umask()
    paths = [Path(path)] + (list(Path(path).rglob("*")) if Path(path).is_dir() else [])
    for p in paths:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def tmp_path(parent: Path, name: str) -> Path:
    """A fresh temporary name next to the target, owned by this process."""
    return Path(parent) / f".{name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"


def is_tmp(path: Path) -> bool:
    return Path(path).name.endswith(TMP_SUFFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove temporary outputs left in `parent` by processes of this host that no longer run."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_NAME.match(p.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])):
            _remove(p)
            removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


# --- the lock and the no-replace rename -------------------------------------------------------------------


@contextlib.contextmanager
def lock(parent: Path, name: str, wait: bool = True) -> Iterator[None]:
    """Exclusive lock for publishing `parent/name`, held from the check to the rename. Without
    `wait`, a lock held by another process is a StaError."""
    path = Path(parent) / f".{name}{LOCK_SUFFIX}"
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise StaError(
                f"{Path(parent) / name} is being written by another sta process; wait for it or choose another -o"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file that its last holder removed while we waited
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold `folder` for a long run that writes into it (sta eval): a second writer fails at once."""
    parent = Path(folder).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _oserror(folder, e) from None
    with lock(parent, Path(folder).name, wait=False):
        yield


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError if `dst` exists. Callers hold `lock`, so
    the check-then-rename fallback (no renameat2, or a file system without it) is safe among sta writers."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(dst))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


# --- what may be replaced ---------------------------------------------------------------------------------


def _contents(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


PICTURE_SOFTWARE = "sta"  # PNG "Software" text chunk: how sta recognises the pictures it drew


def drawn_by_sta(path: Path) -> bool:
    """A picture sta drew (`sta profile --vis`, the r1 sweep): sta may replace it, and --force may
    remove it with the sta folder it was drawn into."""
    if not Path(path).is_file():
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.info.get("Software", "")).split(" ")[0] == PICTURE_SOFTWARE
    except (OSError, ValueError):
        return False


def replace_refusal(out: Path) -> str | None:
    """Why `--force` may not replace the existing `out`, or None if it may."""
    from .artifact import foreign_entries, sta_kind

    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        return f"{out} is the current folder or one of its parents; sta never replaces it"
    if not out.is_dir():
        return f"{out} exists and is not a folder"
    if sta_kind(out) is None and any(out.iterdir()):
        return (
            f"{out} already exists and is not an sta output (it holds {_contents(out)}); --force replaces "
            "only sta outputs and empty folders: choose another -o"
        )
    foreign = foreign_entries(out)  # replacing the folder would delete them
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return (
            f"{out} is an sta output but also holds files sta did not write ({', '.join(foreign[:3])}{more}); "
            "--force replaces only what sta wrote: move them out or choose another -o"
        )
    return None


def check_folder_target(out: Path, force: bool) -> None:
    """Fail early, before any heavy work, if the folder `out` cannot be created (or replaced)."""
    out = Path(out)
    if os.path.lexists(out):
        refusal = replace_refusal(out)
        if refusal is None and not force:
            refusal = f"{out} already exists (pass --force to replace it)"
        if refusal:
            raise StaError(refusal)
    check_parent_writable(out)


def check_parent_writable(path: Path) -> None:
    probe = Path(path).absolute().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StaError(f"cannot write to {path}: {probe} is not writable")


# --- publishing -------------------------------------------------------------------------------------------


def _oserror(what: Path, e: OSError) -> StaError:
    return StaError(f"cannot write to {what}: {e.strerror or e}")


@contextlib.contextmanager
def new_folder(out: Path, force: bool = False, finalize: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success (after `finalize(tmp)`) it becomes `out`; on any error
    it disappears."""
    out = Path(out)
    check_folder_target(out, force)
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent)
        tmp = tmp_path(parent, out.name)
        tmp.mkdir()
    except OSError as e:
        raise _oserror(out, e) from None
    try:
        yield tmp
        if finalize is not None:
            finalize(tmp)
        apply_umask(tmp)
        _publish_folder(tmp, out, force)
    except OSError as e:  # disk full, permissions changed under us...: a clean error, nothing left
        raise _oserror(out, e) from None
    finally:
        _remove(tmp)


def _publish_folder(tmp: Path, out: Path, force: bool) -> None:
    parent = out.absolute().parent
    with lock(parent, out.name):
        if not os.path.lexists(out):
            try:
                rename_noreplace(tmp, out)
            except FileExistsError:
                raise StaError(f"{out} appeared while sta was writing it; left it as it is") from None
            return
        if not force:
            raise StaError(f"{out} appeared while sta was writing it; left it as it is (pass --force to replace it)")
        refusal = replace_refusal(out)
        if refusal:
            raise StaError(refusal)
        old = tmp_path(parent, out.name)
        os.rename(out, old)
        try:
            rename_noreplace(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        _remove(old)


@contextlib.contextmanager
def files_into(
    folder: Path,
    new: list[str],
    records: list[str] = (),
    force: bool = False,
    finalize: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder whose files are then moved into the existing sta folder `folder`.

    `new` files (a model file) replace an existing file only with `force`; `records` (sta's own
    config.json, manifest.json), written by `finalize(tmp)` under the lock so that they describe
    the folder as it is then, are always updated, and must be sta's. Nothing else in `folder` is touched."""
    folder = Path(folder)
    check_files(folder, new, force)
    check_records(folder, records)
    try:
        remove_stale(folder)
        tmp = tmp_path(folder, "files")
        tmp.mkdir()
    except OSError as e:
        raise _oserror(folder, e) from None
    try:
        yield tmp
        with lock(folder, "files"):
            check_files(folder, new, force)
            check_records(folder, records)
            if finalize is not None:
                finalize(tmp)
            apply_umask(tmp)
            for name in [*new, *records]:  # records last: they describe the files before them
                if (tmp / name).exists():
                    os.replace(tmp / name, folder / name)
    except OSError as e:
        raise _oserror(folder, e) from None
    finally:
        _remove(tmp)


def check_records(folder: Path, records: list[str]) -> None:
    """sta rewrites its records (config.json, manifest.json) only where they are its own."""
    from .artifact import foreign_entries

    theirs = [n for n in records if n in foreign_entries(folder)]
    if theirs:
        raise StaError(
            f"{folder} holds {', '.join(theirs)} that sta did not write; sta never rewrites it: choose another -o"
        )


def check_files(folder: Path, names: list[str], force: bool) -> None:
    existing = [n for n in names if os.path.lexists(folder / n)]
    if existing and not force:
        raise StaError(f"{folder} already holds {', '.join(existing)} (pass --force to replace it)")


def replace_file(path: Path, write: Callable[[Path], None], may_replace: Callable[[Path], bool] | None = None) -> Path:
    """Write one file atomically: write(tmp) next to `path`, then rename. An existing `path` is replaced
    only if `may_replace(path)` says sta wrote it (default: never)."""
    path = Path(path)
    _check_file_target(path, may_replace)
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent)
        tmp = tmp_path(parent, path.name)
        write(tmp)
        apply_umask(tmp)
        with lock(parent, path.name):
            _check_file_target(path, may_replace)
            if os.path.lexists(path):
                os.replace(tmp, path)
            else:
                rename_noreplace(tmp, path)
    except OSError as e:
        raise _oserror(path, e) from None
    finally:
        if "tmp" in locals():
            _remove(tmp)
    return path


def _check_file_target(path: Path, may_replace: Callable[[Path], bool] | None) -> None:
    if path.is_dir():
        raise StaError(f"{path} is a folder; give a file name")
    if os.path.lexists(path) and not (may_replace and may_replace(path)):
        raise StaError(f"{path} exists and was not written by sta; choose another name")
    check_parent_writable(path)


def check_file_target(path: Path, may_replace: Callable[[Path], bool] | None = None) -> None:
    """Fail early, before any heavy work, if `replace_file(path, ...)` would refuse."""
    _check_file_target(Path(path), may_replace)
