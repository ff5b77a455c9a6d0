"""Standalone runner: ``python -m simulators.drone --count 5 --to udpout:127.0.0.1:14550`` (``--help`` lists
every option)."""

from .cli import main

if __name__ == "__main__":
    main()
