"""``python -m chatbot COMMAND``: the command line (see ``chatbot/cli/main.py``)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
