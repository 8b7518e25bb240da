"""Fit the Python `lifetimes` package on the same simulated data as our scoring bench.

    cargo bench -p winback-scoring --bench scoring -- --customers 1000000 --write-csv /tmp/shop.csv
    python3 -m venv /tmp/lt && /tmp/lt/bin/pip install lifetimes
    /tmp/lt/bin/python scripts/lifetimes_compare.py /tmp/shop.csv

Prints each fit's parameters, log-likelihood and wall time, for the ratio in the notes.
"""

import sys
import time

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter

path = sys.argv[1]
data = pd.read_csv(path)
print(f"{len(data)} customers from {path}")

for name, fitter in [("bg_nbd", BetaGeoFitter()), ("mbg_nbd", ModifiedBetaGeoFitter())]:
    started = time.perf_counter()
    fitter.fit(data["frequency"], data["recency"], data["T"])
    took = time.perf_counter() - started
    p = fitter.params_
    # lifetimes reports the mean log-likelihood on its internally scaled times.
    print(
        f"{name}: {took:.2f} s  r={p['r']:.4f} alpha={p['alpha']:.4f} a={p['a']:.4f} b={p['b']:.4f}"
        f"  mean LL (lifetimes' scale)={-fitter._negative_log_likelihood_:.6f}"
    )

repeat = data[data["frequency"] > 0]
started = time.perf_counter()
gg = GammaGammaFitter()
gg.fit(repeat["frequency"], repeat["monetary_value"])
took = time.perf_counter() - started
p = gg.params_
print(f"gamma_gamma: {took:.2f} s  p={p['p']:.4f} q={p['q']:.4f} v={p['v']:.4f} on {len(repeat)} repeat customers")
