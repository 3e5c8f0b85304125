"""Run a training script locally as a job would: ``python -m nimbus.runtime SCRIPT [ARGS]``.

The same as ``python SCRIPT`` in local mode (see :mod:`nimbus.runtime.api`), but with the
job's environment in place before the script's first line: Keras picks its torch backend even
when the script starts with ``import keras`` (unless it chose another), and a script that
fails for want of TensorFlow is told what to set. Exit status: 0, or 1 when the script fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nimbus.runtime.usercode import UserCodeError, run_script


def main(argv: list[str] | None = None) -> int:
    """Run the script ``argv[0]`` with the arguments that follow."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 0 if args else 2
    script = Path(args[0])
    if not script.is_file():
        print(f"nimbus.runtime: no script {script}", file=sys.stderr)
        return 2
    try:
        run_script(script.resolve(), args[1:])
    except UserCodeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
