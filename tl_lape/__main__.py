"""``python -m tl_lape``: the same as the ``tl-lape`` command (and ``python -m tl_lape.cli``)."""

import sys

from tl_lape.cli import main

if __name__ == "__main__":
    sys.exit(main())
