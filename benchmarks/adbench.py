"""Anomaly detection on the 27 ADBench "Classical" sets: aepipe against PyOD peers.

Protocol (issues 26 and 41): for each set in ``../shared/datasets/adbench`` and each seed, a
stratified 70/30 split; each method fits on the training part without labels and scores the
test part; AUROC and average precision; the mean over the seeds. Sets over :data:`MAX_ROWS`
rows (ALOI, campaign, celeba, mammography, shuttle, skin) are first cut to a stratified sample
of that many rows, drawn with the seed, the same rows for every method. The peers and aepipe's
estimator get the same standard scaling (fitted on the training part):

- ``aepipe``: the estimator ``AutoencoderReducer()`` with its defaults (no per-set tuning);
- ``aepipe run``: the pipeline's own default path on the unscaled rows, as ``aepipe run``
  takes a table (:class:`PipelineDefault`): the table's ``anomaly_score``;
- peers: PyOD's ``AutoEncoder``, ``VAE``, ``IForest``, ``PCA``, ``KNN`` and ``ECOD`` with
  their defaults, and ``PyOD IF+ECOD+KNN``, aepipe's recipe without the autoencoder (the mean
  of the robust z-scores of PyOD's IForest, ECOD and KNN): does the network add anything?

A run that fails counts AUROC 0.5 and AP the anomaly rate (random ranking), so a failing
method is charged, not left out.

Guarding against tuning to the sets: the sets are split into two fixed halves (alternating in
ADBench's numbering, :data:`HALVES`). Choices are made on half ``A`` (``--quick`` is drawn
from it); the TARGET lines for means, ranks and time are computed on half ``B`` when it was
run, and inversions (below 0.5 where the best peer reaches 0.9) and the gap to PyOD's
AutoEncoder on every set run. docs/models.md says which choices saw which half, and when.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"
    .venv/bin/python benchmarks/adbench.py                      # all 27 sets, 3 seeds
    .venv/bin/python benchmarks/adbench.py --quick              # 8 small half-A sets, 1 seed
    .venv/bin/python benchmarks/adbench.py --half A             # choose here
    .venv/bin/python benchmarks/adbench.py --sets cardio thyroid --seeds 1
    .venv/bin/python benchmarks/adbench.py --results runs.jsonl # reuse finished runs

``--results FILE`` appends every finished (set, method, seed) run to ``FILE`` and skips those
already there, so a long run can be resumed and peers need not be rerun while aepipe changes
(delete the file, or the aepipe lines in it, after changing aepipe). ``--variant
NAME:key=value,...`` adds an aepipe estimator with other parameters, for experiments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import SHARED, machine, require_dataset, target  # noqa: E402

MAX_ROWS = 10_000  # larger sets are cut to a stratified sample of this many rows

# name -> file, in ADBench's numbering
SETS = {
    "aloi": "1_ALOI.npz",
    "annthyroid": "2_annthyroid.npz",
    "breastw": "4_breastw.npz",
    "campaign": "5_campaign.npz",
    "cardio": "6_cardio.npz",
    "cardiotocography": "7_Cardiotocography.npz",
    "celeba": "8_celeba.npz",
    "glass": "14_glass.npz",
    "hepatitis": "15_Hepatitis.npz",
    "internetads": "17_InternetAds.npz",
    "ionosphere": "18_Ionosphere.npz",
    "landsat": "19_landsat.npz",
    "letter": "20_letter.npz",
    "lymphography": "21_Lymphography.npz",
    "mammography": "23_mammography.npz",
    "satellite": "30_satellite.npz",
    "shuttle": "32_shuttle.npz",
    "skin": "33_skin.npz",
    "spambase": "35_SpamBase.npz",
    "stamps": "37_Stamps.npz",
    "thyroid": "38_thyroid.npz",
    "vertebral": "39_vertebral.npz",
    "waveform": "41_Waveform.npz",
    "wbc": "42_WBC.npz",
    "wdbc": "43_WDBC.npz",
    "wine": "45_wine.npz",
    "wpbc": "46_WPBC.npz",
}
# the fixed halves: every other set in ADBench's numbering
HALVES = {"A": list(SETS)[0::2], "B": list(SETS)[1::2]}
# the edit-run loop's sets, all from half A: choices are made there, never on half B
QUICK = ["breastw", "cardio", "hepatitis", "ionosphere", "letter", "thyroid", "wdbc", "wpbc"]
PEERS = (
    "PyOD AE",
    "PyOD VAE",
    "PyOD IForest",
    "PyOD PCA",
    "PyOD KNN",
    "PyOD ECOD",
    "PyOD IF+ECOD+KNN",
)
AEPIPE = "aepipe"  # the estimator, AutoencoderReducer() with its defaults
PIPELINE = "aepipe run"  # the pipeline's default path (PipelineDefault)
ENSEMBLE_PEER = "PyOD IF+ECOD+KNN"
SINGLE_PEERS = PEERS[:-1]  # one detector each; the last peer is aepipe's recipe from PyOD


class PyODEnsemble:
    """The ensemble recipe built from PyOD's own detectors: IForest, ECOD and KNN fitted on the
    same rows, each test score as a robust z-score over that detector's training scores
    (median and 1.4826 MAD), averaged. The fair question for aepipe's ``ensemble``: does the
    autoencoder add anything to the same ensemble without it?"""

    def __init__(self, random_state: int = 0) -> None:
        from pyod.models.ecod import ECOD
        from pyod.models.iforest import IForest
        from pyod.models.knn import KNN

        self.detectors = [IForest(random_state=random_state), ECOD(), KNN()]

    def fit(self, x: np.ndarray) -> PyODEnsemble:
        from scipy.stats import median_abs_deviation

        self.stats = []
        for detector in self.detectors:
            detector.fit(x)
            train = detector.decision_scores_
            spread = median_abs_deviation(train, scale="normal")
            self.stats.append((float(np.median(train)), max(float(spread), 1e-12)))
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        parts = [
            (d.decision_function(x) - center) / spread
            for d, (center, spread) in zip(self.detectors, self.stats, strict=True)
        ]
        return np.mean(parts, axis=0)


def _aepipe(params: dict[str, object]) -> Callable[[int], object]:
    def make(seed: int) -> object:
        from ae_models import AutoencoderReducer

        return AutoencoderReducer(random_state=seed, **params)

    return make


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
        if name == "PyOD KNN":
            from pyod.models.knn import KNN

            return KNN()
        if name == "PyOD ECOD":
            from pyod.models.ecod import ECOD

            return ECOD()
        if name == "PyOD IF+ECOD+KNN":
            return PyODEnsemble(random_state=seed)
        from pyod.models.pca import PCA

        return PCA(random_state=seed)

    return make


class PipelineDefault:
    """The pipeline's own default path on a table, as ``aepipe run`` takes it: the fit rows
    written as an NPZ source, the ingest (entity ids, hashed train / val / test splits),
    normalize with its default scaling (min-max), the train stage's model and fit (early
    stopping on its val split; the scorer fitted on train and val), then the test rows
    normalized and scored as the feature-table writer scores them; the score is the table's
    ``anomaly_score`` (the calibrated score). The stages run as plain functions (the same
    code the flow's tasks wrap, as ``benchmarks/overhead.py`` runs them), without Prefect's
    server and MLflow: their seconds are not the network's. Takes the raw rows, not the
    standardized ones: the pipeline normalizes for itself."""

    raw = True  # run_one hands this method the unscaled rows

    def __init__(self, random_state: int = 0) -> None:
        self.seed = random_state

    def fit(self, x: np.ndarray) -> PipelineDefault:
        import dataclasses
        import tempfile

        from ae_models.preprocessing.normalizer import Normalizer
        from ae_models.runtime import SCORING_PRECISION
        from ae_models.training.fitting import fit_autoencoder
        from flows.ingest import ingest_source
        from stores import resolve_stores
        from tasks.config import build_config
        from tasks.io.splits import load_split_matrices
        from tasks.normalize import normalize_dataset
        from tasks.train import build_model

        self.home = tempfile.TemporaryDirectory(prefix="aepipe-adbench-")
        source = Path(self.home.name) / "rows.npz"
        np.savez(source, X=x)
        cfg = build_config(
            {"dataset": "bench", "source": {"path": str(source)}, "train": {"seed": self.seed}}
        )
        stores = resolve_stores(Path(self.home.name) / "home")
        data = normalize_dataset(ingest_source(cfg, stores), cfg)
        parts = load_split_matrices(data)
        self.normalizer = Normalizer.load(data.spec_path)
        self.model = build_model(cfg, len(data.features), self.normalizer.unit_range)
        fit = fit_autoencoder(
            self.model,
            parts["train"],
            parts["val"],
            dataclasses.replace(cfg.train, checkpoint_dir=None),
            score=cfg.score,
            contamination=cfg.contamination,
            score_precision=SCORING_PRECISION,
            data="pixels" if self.normalizer.fixed_scale else "table",
        )
        self.scorer, self.precision = fit.scorer, SCORING_PRECISION
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        import pandas as pd

        from ae_models.scoring.scorer import score_rows

        frame = pd.DataFrame(x, columns=self.normalizer.source_columns)
        rows = self.normalizer.transform(frame)
        scores = score_rows(self.model, rows, self.scorer, precision=self.precision).scores
        return self.scorer.calibration.calibrate(scores)


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``NAME:key=value,key=value`` as a name and estimator parameters (values parsed as
    JSON where they parse, else kept as strings)."""
    name, _, rest = text.partition(":")
    params: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return name, params


def load_set(name: str, seed: int) -> tuple[np.ndarray, ...]:
    """The seed's split of one set: scaled training rows, scaled test rows, test labels, and
    the same training and test rows unscaled (for the pipeline, which scales them itself)."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = np.load(SHARED / "adbench" / SETS[name])
    x, y = data["X"].astype(np.float64), data["y"].astype(int)
    if len(x) > MAX_ROWS:
        x, _, y, _ = train_test_split(
            x, y, train_size=MAX_ROWS, stratify=y, random_state=1000 + seed
        )
    x_fit, x_test, _, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_fit)
    return (
        scaler.transform(x_fit).astype(np.float32),
        scaler.transform(x_test).astype(np.float32),
        y_test,
        x_fit,
        x_test,
    )


def run_one(
    make: Callable[[int], object], x_fit, x_test, y_test, raw_fit, raw_test, seed: int
) -> dict:
    """Fit on unlabelled training rows, score the test rows: AUROC, AP, seconds. A method
    marked ``raw`` gets the unscaled rows."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    t0 = time.perf_counter()
    try:
        model = make(seed)
        if getattr(model, "raw", False):
            x_fit, x_test = raw_fit, raw_test
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


def cell(runs: list[dict], key: str) -> float | None:
    """The mean over seeds; a seed that failed counts AUROC 0.5 and AP the anomaly rate (what
    ranking at random gives); seconds only over the seeds that ran."""
    values = []
    for r in runs:
        if "error" not in r:
            values.append(r[key])
        elif key == "auroc":
            values.append(0.5)
        elif key == "ap":
            values.append(r.get("rate", 0.0))
    return float(np.mean(values)) if values else None


def average_ranks(table: dict[str, dict[str, float]], sets: list[str]) -> dict[str, float]:
    """Each method's rank by AUROC on each set (1 = best, ties share the mean rank), averaged
    over ``sets``."""
    from scipy.stats import rankdata

    methods = list(table)
    ranks = np.array([rankdata([-table[m][s] for m in methods]) for s in sets])
    return {m: float(ranks[:, i].mean()) for i, m in enumerate(methods)}


def report(results: dict[tuple[str, str], list[dict]], sets: list[str], methods: list[str]):
    """Per-set tables (AUROC, AP, seconds), means and average ranks per half, TARGET lines."""
    for key, title in (("auroc", "AUROC"), ("ap", "average precision"), ("seconds", "fit+score s")):
        print(f"\n{title} (mean over seeds; * = some seeds failed and count as random ranking)")
        print(f"{'set':17s}" + "".join(f"{m[-12:]:>13s}" for m in methods))
        for name in sets:
            row = ""
            for m in methods:
                runs = results[(name, m)]
                value = cell(runs, key)
                failed = any("error" in r for r in runs)
                row += f"{'failed':>13s}" if value is None else f"{value:12.3f}" + " *"[failed]
            print(f"{name:17s}{row}")
    auroc = {m: {s: cell(results[(s, m)], "auroc") for s in sets} for m in methods}
    ap = {m: {s: cell(results[(s, m)], "ap") for s in sets} for m in methods}
    groups = {"all": sets} | {
        f"half {h}": [s for s in part if s in sets] for h, part in HALVES.items()
    }
    print(f"\n{'':24s}" + "".join(f"{m[-12:]:>13s}" for m in methods))
    for label, part in groups.items():
        if not part:
            continue
        ranks = average_ranks(auroc, part)
        lines = {
            f"mean AUROC, {label} ({len(part)})": [
                np.mean([auroc[m][s] for s in part]) for m in methods
            ],
            f"mean AP, {label}": [np.mean([ap[m][s] for s in part]) for m in methods],
            f"avg rank, {label}": [ranks[m] for m in methods],
        }
        for title, values in lines.items():
            print(f"{title:24s}" + "".join(f"{v:13.3f}" for v in values))

    def seconds(part: list[str]) -> dict[str, float]:
        return {
            m: sum(r["seconds"] for s in part for r in results[(s, m)] if "error" not in r)
            for m in methods
        }

    total = seconds(sets)
    print(f"{'fit+score s, all':24s}" + "".join(f"{total[m]:13.1f}" for m in methods))
    ours = [m for m in (AEPIPE, PIPELINE) if m in methods]
    peers = [m for m in methods if m in PEERS]
    if ours and peers:
        judged = [s for s in HALVES["B"] if s in sets] or sets
        targets(auroc, seconds(judged), sets, ours, peers)


def targets(
    auroc: dict[str, dict[str, float]],
    total: dict[str, float],
    sets: list[str],
    ours: list[str],
    peers: list[str],
) -> None:
    """The TARGET lines, for each of aepipe's methods (the estimator, the pipeline's default
    path). Means, ranks and ``seconds`` (fit+score per method) are judged on half B, the
    confirmation half, when it was run (on the sets run otherwise, said so); inversions and
    the gap to PyOD's AutoEncoder on every set run."""
    judged = [s for s in HALVES["B"] if s in sets]
    if judged:
        print(f"\nmeans and ranks judged on half B ({len(judged)} sets), unseen while choosing")
    else:
        judged = sets
        print(f"\nhalf B not run: means and ranks on the {len(sets)} sets run, no confirmation")
    single = [m for m in peers if m in SINGLE_PEERS]
    for method in ours:
        tag = "adbench" if method == AEPIPE else "adbench_pipeline"
        print(f"\n{method}:")
        means = {m: float(np.mean([auroc[m][s] for s in judged])) for m in [method, *peers]}
        if single:
            best = max(single, key=means.get)
            print(f"best single peer by mean AUROC: {best} {means[best]:.3f}")
            gap = means[method] - means[best]
            print(target(f"{tag}_mean_auroc_minus_best_single_peer", gap, 0.0))
        if ENSEMBLE_PEER in peers:
            gap = means[method] - means[ENSEMBLE_PEER]
            print(target(f"{tag}_mean_auroc_minus_pyod_ensemble", gap, 0.0))
        ranks = average_ranks({m: auroc[m] for m in [method, *peers]}, judged)
        best_rank = min((ranks[m], m) for m in peers)
        print(f"best peer by average rank: {best_rank[1]} {best_rank[0]:.2f}")
        print(
            target(
                f"{tag}_avg_rank_minus_best_peer",
                ranks[method] - best_rank[0],
                0.0,
                higher_is_better=False,
            )
        )
        best_peer = {s: max(auroc[m][s] for m in peers) for s in sets}
        inverted = [s for s in sets if best_peer[s] >= 0.9 and auroc[method][s] < 0.5]
        lowest = min((auroc[method][s] for s in sets if best_peer[s] >= 0.9), default=float("nan"))
        print(f"sets where the best peer reaches 0.9 and {method} is below 0.5: {inverted}")
        print(target(f"{tag}_inverted_sets", len(inverted), 0, higher_is_better=False))
        print(f"lowest AUROC where the best peer reaches 0.9: {lowest:.3f}")
        if "PyOD AE" in peers:
            gaps = {s: auroc[method][s] - auroc["PyOD AE"][s] for s in sets}
            worst = min(gaps, key=gaps.get)
            print(f"worst set against PyOD AE: {worst}")
            print(target(f"{tag}_worst_gap_vs_pyod_ae", gaps[worst], -0.05))
            print(
                target(
                    f"{tag}_seconds_vs_pyod_ae",
                    total[method] / total["PyOD AE"],
                    3.0,
                    higher_is_better=False,
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", choices=list(SETS))
    parser.add_argument("--half", choices=list(HALVES), help="only the sets of one half")
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK)} small sets, 1 seed")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--methods", nargs="*", help="default: aepipe and every peer")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:k=v,...")
    parser.add_argument("--results", type=Path, help="JSON lines of finished runs, reused")
    args = parser.parse_args()
    require_dataset("adbench")  # exits with a message when the shared sets are absent
    sets = args.sets or (HALVES[args.half] if args.half else QUICK if args.quick else list(SETS))
    seeds = args.seeds or (1 if args.quick else 3)
    factories: dict[str, Callable[[int], object]] = {
        AEPIPE: _aepipe({}),
        PIPELINE: lambda seed: PipelineDefault(seed),
    }
    factories |= {n: _pyod(n) for n in PEERS}
    for text in args.variant:
        name, params = parse_variant(text)
        factories[name] = _aepipe(params)
    methods = args.methods or [*factories]
    unknown = [m for m in methods if m not in factories]
    if unknown:
        sys.exit(f"unknown methods {unknown}; known: {list(factories)}")
    print(machine(), flush=True)
    print(f"sets over {MAX_ROWS:,} rows are cut to a stratified sample of {MAX_ROWS:,}")
    done: dict[tuple[str, str, int], dict] = {}
    if args.results and args.results.exists():
        for line in args.results.read_text().splitlines():
            r = json.loads(line)
            done[(r["set"], r["method"], r["seed"])] = r
    results: dict[tuple[str, str], list[dict]] = {}
    for name in sets:
        for seed in range(seeds):
            todo = [m for m in methods if (name, m, seed) not in done]
            split = load_set(name, seed) if todo else None
            for method in methods:
                r = done.get((name, method, seed))
                if r is None:
                    r = run_one(factories[method], *split, seed)
                    r |= {"set": name, "method": method, "seed": seed}
                    if args.results:
                        with args.results.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                    shown = r.get("error") or f"AUROC {r['auroc']:.3f}  {r['seconds']:.1f} s"
                    print(f"{name:17s} seed {seed}  {method:13s} {shown}", flush=True)
                results.setdefault((name, method), []).append(r)
    report(results, sets, methods)


if __name__ == "__main__":
    main()
