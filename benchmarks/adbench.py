"""Anomaly detection on ADBench "Classical" sets: aepipe's estimator against PyOD peers.

Protocol (issue 8): for each set in ``../shared/datasets/adbench`` and each seed, a stratified
70/30 split; the same standard scaling (fitted on the training part) for everyone; each
method fits on the training part without labels and scores the test part; AUROC and average
precision; the mean over the seeds. aepipe runs with its estimator's defaults (no per-set
tuning), and once more without robust training (``trim_fraction=0``) to show what that
adds; peers are PyOD ``AutoEncoder``, ``VAE``, ``IForest`` and ``PCA`` with theirs.
Prints a table per metric, the mean per method, and fit + score seconds.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"
    .venv/bin/python benchmarks/adbench.py                      # all six sets, 3 seeds
    .venv/bin/python benchmarks/adbench.py --sets cardio thyroid --seeds 1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, require_dataset, target  # noqa: E402

SETS = {
    "cardio": "6_cardio.npz",
    "thyroid": "38_thyroid.npz",
    "shuttle": "32_shuttle.npz",
    "satellite": "30_satellite.npz",
    "mammography": "23_mammography.npz",
    "annthyroid": "2_annthyroid.npz",
}


def _aepipe(seed: int) -> object:
    from ae_models import AutoencoderReducer

    return AutoencoderReducer(random_state=seed)


def _aepipe_untrimmed(seed: int) -> object:
    """The defaults without robust training: shows what trimming the worst rows adds."""
    from ae_models import AutoencoderReducer

    return AutoencoderReducer(random_state=seed, trim_fraction=0.0)


def _pyod(name: str) -> Callable[[int], object]:
    def make(seed: int) -> object:
        if name == "PyOD AE":
            from pyod.models.auto_encoder import AutoEncoder

            return AutoEncoder(random_state=seed, verbose=0)
        if name == "PyOD VAE":
            from pyod.models.vae import VAE

            return VAE(random_state=seed, verbose=0)
        if name == "PyOD IForest":
            from pyod.models.iforest import IForest

            return IForest(random_state=seed)
        from pyod.models.pca import PCA

        return PCA(random_state=seed)

    return make


METHODS: dict[str, Callable[[int], object]] = {
    "aepipe": _aepipe,
    "aepipe untrimmed": _aepipe_untrimmed,
    **{n: _pyod(n) for n in ("PyOD AE", "PyOD VAE", "PyOD IForest", "PyOD PCA")},
}


def run_one(make: Callable[[int], object], x_fit, x_test, y_test, seed: int) -> dict:
    """Fit on unlabelled training rows, score the test rows: AUROC, AP, seconds."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    t0 = time.perf_counter()
    try:
        model = make(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x_fit)
            scores = np.asarray(model.decision_function(x_test), dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinity")
    except Exception as err:  # a peer failing on a set is a result to report, not a crash
        return {
            "error": f"{type(err).__name__}: {str(err).splitlines()[0][:60]}",
            "rate": float(np.mean(y_test)),  # the AP of ranking at random
            "seconds": time.perf_counter() - t0,
        }
    return {
        "auroc": float(roc_auc_score(y_test, scores)),
        "ap": float(average_precision_score(y_test, scores)),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    folder = require_dataset("adbench")
    print(machine(), flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    for name in args.sets:
        data = np.load(folder / SETS[name])
        x, y = data["X"].astype(np.float64), data["y"].astype(int)
        for seed in range(args.seeds):
            x_fit, x_test, _, y_test = train_test_split(
                x, y, test_size=0.3, stratify=y, random_state=seed
            )
            scaler = StandardScaler().fit(x_fit)
            x_fit = scaler.transform(x_fit).astype(np.float32)
            x_test = scaler.transform(x_test).astype(np.float32)
            for method in args.methods:
                r = run_one(METHODS[method], x_fit, x_test, y_test, seed)
                results.setdefault((name, method), []).append(r)
                shown = r.get("error") or f"AUROC {r['auroc']:.3f}  {r['seconds']:.1f} s"
                print(f"{name:12s} seed {seed}  {method:13s} {shown}", flush=True)

    failed_auroc = 0.5  # a detector that crashes on a set detects nothing there

    def mean(name: str, method: str, key: str) -> float | None:
        """The mean over seeds; a seed that failed counts AUROC 0.5 and AP the anomaly rate
        (what ranking at random gives), so a failing method is charged, not left out."""
        runs = results[(name, method)]
        if key == "seconds" and all("error" in r for r in runs):
            return None
        values = []
        for r in runs:
            if "error" not in r:
                values.append(r[key])
            elif key == "auroc":
                values.append(failed_auroc)
            elif key == "ap":
                values.append(r.get("rate", 0.0))
        return float(np.mean(values)) if values else None

    for key, title in (("auroc", "AUROC"), ("ap", "average precision"), ("seconds", "fit+score s")):
        print(f"\n{title} (mean of {args.seeds} seeds; a failed run counts as random ranking)")
        print(f"{'set':12s}" + "".join(f"{m:>18s}" for m in args.methods))
        for name in args.sets:
            cells = [mean(name, m, key) for m in args.methods]
            fails = [sum("error" in r for r in results[(name, m)]) for m in args.methods]
            print(
                f"{name:12s}"
                + "".join(
                    f"{'failed':>18s}" if c is None else f"{c:17.3f}" + ("*" if f else " ")
                    for c, f in zip(cells, fails, strict=True)
                )
            )
    print("(* some seeds failed there and count as random ranking)")
    overall = {m: float(np.mean([mean(s, m, "auroc") for s in args.sets])) for m in args.methods}
    print("\nmean AUROC over the sets: " + ", ".join(f"{m} {v:.3f}" for m, v in overall.items()))
    if "aepipe" in args.methods and len(args.methods) > 1:
        peers = {m: v for m, v in overall.items() if m.startswith("PyOD")}
        best = max(peers, key=peers.get)
        print(f"best peer: {best} {peers[best]:.3f}")
        print(target("adbench_mean_auroc_minus_best_peer", overall["aepipe"] - peers[best], 0.0))
        if "PyOD AE" in args.methods:
            gaps = [mean(s, "aepipe", "auroc") - mean(s, "PyOD AE", "auroc") for s in args.sets]
            print(target("adbench_worst_gap_vs_pyod_ae", min(gaps), -0.02))


if __name__ == "__main__":
    main()
