"""The ServerApp (an entry point): rounds, global posterior, result folder.

All the logic is in :func:`bayes_pfl.flower.app.server_app`; settings come from
``[tool.flwr.app.config]`` in ``pyproject.toml`` and ``flwr run -c key=value``.
"""

from bayes_pfl.flower.app import server_app

app = server_app()
