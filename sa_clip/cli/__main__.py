"""``python -m sa_clip.cli``: the sa-clip command."""

from . import console

console()
