"""Entry point: the web chat on port 7860 and the OpenAI-compatible API on port 8000, in one process.

python app.py --demo            # generated tiny model, no download
python app.py --model PATH      # a local Qwen3 checkpoint
python app.py --help            # every option (also settable as QWEN_* environment variables)
"""

import sys

from chatbot.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
