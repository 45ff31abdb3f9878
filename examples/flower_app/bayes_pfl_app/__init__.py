"""bayes-pfl as a Flower app: hierarchical Bayesian federated learning over Flower."""
