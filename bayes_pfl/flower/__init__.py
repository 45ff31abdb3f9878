"""Flower backend: the same algorithm functions, run over Flower's Message API.

* :mod:`~bayes_pfl.flower.records`: pytrees <-> ``ArrayRecord`` by key path (no pickle);
* :mod:`~bayes_pfl.flower.client`: :func:`make_client_app`, a ClientApp over any
  :class:`~bayes_pfl.algorithms.Algorithm` (per-node state in ``Context.state``);
* :mod:`~bayes_pfl.flower.server`: :func:`run_server`, the round loop of
  :func:`bayes_pfl.simulation.run_rounds` over a ``Grid`` (same keys, same
  ``server_update``, timeouts, rejection of malformed messages, checkpoints), and
  :func:`finish`, the after-rounds step of :func:`bayes_pfl.federated.fit_ep`;
* :mod:`~bayes_pfl.flower.config`: the run config (:class:`FlowerSettings`) and each
  node's rows;
* :mod:`~bayes_pfl.flower.app`: ready-made ``server_app()``/``client_app()``.

For the same seed and data a Flower run gives the in-process run's posteriors (see
``docs/flower.md``). Importing this package imports ``flwr`` (``pip install
bayes-pfl[flower]``).
"""

from bayes_pfl.flower.client import make_client_app, personalize_client
from bayes_pfl.flower.config import ClientData, FlowerSettings, load_client_data
from bayes_pfl.flower.records import from_array_record, to_array_record
from bayes_pfl.flower.server import Federation, discover, exchange, finish, run_server

__all__ = [
    "ClientData",
    "Federation",
    "FlowerSettings",
    "discover",
    "exchange",
    "finish",
    "from_array_record",
    "load_client_data",
    "make_client_app",
    "personalize_client",
    "run_server",
    "to_array_record",
]
