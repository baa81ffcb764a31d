"""``python -m benchmarks``: the command is ``benchmarks.run.main``."""

from benchmarks.run import main

if __name__ == "__main__":
    main()
