"""The ClientApp (an entry point): one client's rounds and personalized draws.

All the logic is in :func:`bayes_pfl.flower.app.client_app`. A node finds its rows
through its node config: ``partition-id`` (its position) and either ``data-path``
(a CSV holding only its rows) or the run config's ``data`` split into clients.
"""

from bayes_pfl.flower.app import client_app

app = client_app()
