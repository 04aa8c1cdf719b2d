"""``python -m audiocraft_ext``: the same command as ``audiocraft-export``."""

from .app.cli import main

if __name__ == "__main__":
    main()
