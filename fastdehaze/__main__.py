"""``python -m fastdehaze ...``: the same as the ``fastdehaze`` command (see fastdehaze.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
