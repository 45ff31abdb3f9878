"""Federated EP on the Minnesota radon data (85 counties as clients), checked against NUTS.

Run:  python examples/radon_federated.py [--out DIR]

Fits posteriordb's radon_intercept model twice on the same data: centralized NUTS (all
rows pooled: the reference) and federated EP (each county only sends Gaussian summaries),
prints the largest standardized differences, a new county's cold-start posterior, and
writes both result folders.
"""

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from bayes_pfl import FederatedData, fit_nuts, load, save_fit  # noqa: E402
from bayes_pfl.federated import cold_start, fit_ep  # noqa: E402
from bayes_pfl.models import radon_intercept  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/radon-example")
    args = parser.parse_args()

    data = FederatedData.from_pandas(
        load("radon"), client_col="county", target="log_radon", features=["log_uppm", "floor"]
    )
    model = radon_intercept()
    ref = fit_nuts(model, data, num_chains=4, progress_bar=False)
    fed = fit_ep(model, data, rounds=10, progress=False)
    print(
        f"NUTS {ref.info['wall_time_s']:.1f} s; EP {fed.info['wall_time_s']:.1f} s, "
        f"{fed.info['rounds']} rounds, converged={fed.info['converged']}"
    )
    for name in ("mu_alpha", "sigma_alpha", "sigma_y", "alpha"):
        r = ref.phi.get(name, ref.theta.get(name))
        f = fed.phi.get(name, fed.theta.get(name))
        r2, f2 = r.reshape(-1, int(np.prod(r.shape[2:]))), f.reshape(-1, int(np.prod(f.shape[2:])))
        z = np.abs(f2.mean(0) - r2.mean(0)) / r2.std(0)
        ratio = f2.std(0) / r2.std(0)
        print(
            f"{name:12s} max |mean diff|/sd {z.max():.3f}   sd ratio [{ratio.min():.3f}, "
            f"{ratio.max():.3f}]"
        )
    x_new = np.array([[0.5, 0.0], [0.5, 1.0]])  # two homes in a new county
    y_new = np.array([1.8, 1.1])
    new = cold_start(fed, x=x_new, y=y_new)
    alpha = new.theta["alpha"]
    print(
        f"new county alpha: mean {alpha.mean():.3f}, 90% interval "
        f"[{np.quantile(alpha, 0.05):.3f}, {np.quantile(alpha, 0.95):.3f}]"
    )
    save_fit(ref, data, f"{args.out}/nuts")
    save_fit(fed, data, f"{args.out}/ep")
    print(f"wrote {args.out}/nuts and {args.out}/ep")


if __name__ == "__main__":
    main()
