"""`python cli.py …`: the same commands as the `fstore` console script."""
from fstore.cli import main

if __name__ == "__main__":
    main()
