import sys

from cltk.cli import main

if __name__ == "__main__":
    sys.exit(main())
