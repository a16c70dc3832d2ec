"""What the tests share, in one place (imported as ``helpers.*``; ``tests/`` is on pytest's path).

* ``helpers.app``: ``running_app(args, log_path)``, the app started as users start it (``python app.py``)
  on free local ports and always stopped; ``RunningApp``; ``WAIT_LIMIT_SECONDS``, the one wait bound.
* ``helpers.clients``: ``openai_client(app)``, the one way tests build the ``openai`` client.
* ``helpers.openai_spec``: validators from OpenAI's published schemas (``tests/spec/``).
* ``helpers.qwen3``: the real Qwen3 tokenizer files (npm, checksum verified, cached).
* ``helpers.browser``: headless Chromium and the page actions (send, wait for stats, settings).
* ``helpers.llamacpp``: ``llama-server`` on a GGUF, started and stopped.
* ``helpers.pdf``: ``tiny_pdf(pages)``, a PDF written by hand (for attaching one).
* ``helpers.tools``: the tool definitions both the parser tests and the API tests use.
* ``helpers/litellm_client.py``: a script run in litellm's own environment (not imported).

Fixtures live in the ``conftest.py`` files: ``tests/conftest.py`` (generated checkpoints, the shared
running apps, the tier markers), ``tests/browser/conftest.py`` (the browser), ``tests/peers/conftest.py``
(llama.cpp). Test modules import helpers, never each other.
"""
