import sys

from smartclip.cli import console

sys.exit(console())
