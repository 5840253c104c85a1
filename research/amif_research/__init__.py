"""AMIF research: training, evaluation, metrics, baselines and attacks, on top of the `amif` runtime."""
