"""``python -m refstore``."""

from refstore.cli import main

if __name__ == "__main__":
    main()
