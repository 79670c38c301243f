"""``python -m balloond``: the same as the ``balloond`` command."""

import sys

from balloond.programs.balloond import main

sys.exit(main())
