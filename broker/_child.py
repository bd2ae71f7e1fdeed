"""Starting a broker as a child process that runs the very zstream this process runs.

``python -m zstream.broker.cli`` finds ``zstream`` through the child's ``sys.path``,
whose first entry is the current directory. Started from a directory holding another
checkout (a worktree of an older commit, a benchmark comparing two trees), the child
would run that checkout's broker beside this process's client without a word. So the
child runs with ``-P`` (Python 3.11: no current directory on ``sys.path``) and, when
this process imported zstream from a source tree rather than an installed
distribution, with that tree first on ``PYTHONPATH``. Empty entries of
``PYTHONPATH`` (``export PYTHONPATH=$PYTHONPATH:/x`` with it unset leaves one) would
put the current directory back, so they are dropped, and relative ones are made
absolute.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Mapping
from pathlib import Path

import zstream

BROKER_MODULE = "zstream.broker.cli"


def broker_argv(*args: str) -> list[str]:
    """``[python, -P, -m, zstream.broker.cli, *args]``."""
    return [sys.executable, "-P", "-m", BROKER_MODULE, *args]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with the source tree this process
    imported zstream from put first on ``PYTHONPATH``. An installed zstream (in one of
    the interpreter's site-packages) is found by the child anyway and is not added:
    site-packages ahead of the standard library could shadow it."""
    out = dict(os.environ if env is None else env)
    root = Path(zstream.__file__).absolute().parent.parent
    resolved = root.resolve()
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    entries = [os.path.abspath(p) for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    if resolved not in {Path(p).resolve() for p in sites}:  # a source tree
        entries = [str(root), *(p for p in entries if Path(p).resolve() != resolved)]
    if entries:
        out["PYTHONPATH"] = os.pathsep.join(entries)
    else:
        out.pop("PYTHONPATH", None)
    return out
