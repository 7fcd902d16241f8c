"""``python -m mimaface.train`` = ``mimaface train``, the entry point for ``accelerate launch -m mimaface.train``."""

import sys

from mimaface.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
