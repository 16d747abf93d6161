"""Where a data file named in a prototxt is: the current directory first, as
Caffe does, then ``search_path`` (the Net sets it to the prototxt's folder)."""
from __future__ import annotations

import os


def search_dirs(search_path) -> list[str]:
    """``search_path`` (None, one directory, or several) as a list."""
    if not search_path:
        return []
    return [search_path] if isinstance(search_path, (str, os.PathLike)) else list(search_path)


def find_file(path: str, search_path=None) -> str | None:
    """``path`` if it exists (absolute, or relative to the current directory),
    else the first ``search_path`` directory holding it; None if nowhere."""
    if os.path.exists(path):
        return path
    if not os.path.isabs(path):
        for folder in search_dirs(search_path):
            candidate = os.path.join(folder, path)
            if os.path.exists(candidate):
                return candidate
    return None


def looked_in(path: str, search_path=None) -> str:
    """Where :func:`find_file` looked, for an error message."""
    if os.path.isabs(path):
        return path
    places = [os.getcwd(), *map(str, search_dirs(search_path))]
    return " and ".join(dict.fromkeys(places))
