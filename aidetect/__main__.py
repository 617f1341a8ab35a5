"""`python -m aidetect ...` (and `torchrun -m aidetect train ...`)."""

from aidetect.cli import main

if __name__ == "__main__":
    main()
