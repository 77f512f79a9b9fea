"""Artifacts a reader looks at after training: feature statistics and two plots, from bounded samples."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

from taxi_fares.features import LABEL, MODEL_FEATURES

matplotlib.use("Agg")  # no display on clusters or CI

from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)


def training_reports(sample: pd.DataFrame, predictions: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write feature_statistics.csv, predicted_vs_actual.png and residuals.png; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = out_dir / "feature_statistics.csv"
    sample[[*MODEL_FEATURES, LABEL]].describe().T.to_csv(stats)

    actual, predicted = predictions[LABEL], predictions["prediction"]
    scatter = out_dir / "predicted_vs_actual.png"
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(actual, predicted, s=4, alpha=0.4)
    top = float(max(actual.max(), predicted.max()))
    ax.plot([0, top], [0, top], color="black", linewidth=1)
    ax.set(xlabel="actual fare", ylabel="predicted fare", title=f"Holdout: predicted vs actual ({len(actual)} rows)")
    fig.savefig(scatter, dpi=80)
    plt.close(fig)

    residuals = out_dir / "residuals.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(predicted - actual, bins=60)
    ax.set(xlabel="predicted - actual", ylabel="trips", title="Holdout residuals")
    fig.savefig(residuals, dpi=80)
    plt.close(fig)
    return [stats, scatter, residuals]
