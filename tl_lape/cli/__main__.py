"""``python -m tl_lape.cli``: the same as the ``tl-lape`` command."""

import sys

from tl_lape.cli import main

sys.exit(main())
