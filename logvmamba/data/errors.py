"""The one exception type for bad dataset input.

Every problem with a dataset on disk (a missing folder or file, a malformed
``dataset.json``, a corrupt image, a shape or label mismatch) is raised as
:class:`DatasetError`, a :class:`ValueError` whose message is one line and
starts with the offending path.
"""

from __future__ import annotations

import os

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Bad dataset input; ``str(err)`` is ``"<path>: <what is wrong>"`` on one line.

    Args:
        path: the file or folder at fault (``None`` when no single path is).
        message: what is wrong, and where useful what to do about it.

    Examples::

        >>> str(DatasetError("/data/Dataset704_Endovis17/dataset.json", "missing"))
        '/data/Dataset704_Endovis17/dataset.json: missing'
    """

    def __init__(self, path: str | os.PathLike | None, message: str | None = None):
        if message is None:  # DatasetError("text"): how torch re-raises worker errors
            path, message = None, path
        self.path = None if path is None else os.fspath(path)
        self.reason = " ".join(str(message).split())  # keep it on one line
        super().__init__(self.path, self.reason)  # args survive pickling (DataLoader workers)

    def __str__(self) -> str:
        return self.reason if self.path is None else f"{self.path}: {self.reason}"
