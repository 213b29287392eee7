"""``python -m coalmine.cli``: the `coalmine` command, for a child process of this Python."""

import sys

from coalmine.cli.main import main

sys.exit(main())
