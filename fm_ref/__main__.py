"""``python -m fm_ref``: the same as the ``fm-ref`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
