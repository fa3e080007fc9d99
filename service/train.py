"""`python -m service.train ...`: the same as `a2c train`; what `ray job submit` runs."""

import sys

from service.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
