"""The warm server's entry point: ``python -m autopod.warmstart FOLDER NAME``, started by ``core.warm`` in the
background. Its children run the console script's ``launch.dispatch``."""

import sys

from .core import warm
from .launch import dispatch

if __name__ == "__main__" and len(sys.argv) == 3:
    warm.serve(sys.argv[1], sys.argv[2], dispatch)
