"""``python -m sa_clip.cli``: the sa-clip command."""

import sys

from . import main

sys.exit(main())
