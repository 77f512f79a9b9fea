"""The drift report of a monitoring run: one self-contained HTML page (PNG figures inlined as base64) that a
browser opens from the run's artifacts.

It draws only what the stage has already counted: the per-bin shares of ``taxi_fares.profile_tables.distributions``
(reference against the range, as bars and, for numeric features, as CDFs at the reference's edges), PSI and KS per
feature against their thresholds, and the realized error and outlier share of the model version's recent windows
(the stage's own rows of ``performance_metrics`` and ``outlier_metrics``). Every string from data or
configuration is escaped; numbers are printed in the table and carried exactly in ``data-*`` attributes, so a
reader (or a test) can match them with the drift tables.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import matplotlib

from taxi_fares.drift_detector import FeatureDrift
from taxi_fares.profile_tables import Distribution

matplotlib.use("Agg")  # no display on clusters or CI

from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

REPORT_FOLDER = "monitoring"
REPORT_NAME = "drift_report.html"
MOST_BARS = 12  # a categorical chart shows the bins with the largest shares; the rest are pooled
_DPI = 72


@dataclass(frozen=True)
class WindowResult:
    """One recent window of the model version: its realized error (None before fares are known) and outlier share."""

    start: str
    end: str
    rmse: Optional[float]
    holdout_rmse: Optional[float]
    mae: Optional[float]
    outlier_share: Optional[float]


@dataclass(frozen=True)
class ReportHeader:
    model_name: str
    model_version: str
    start: str
    end: str
    status: str
    rows: int
    psi_threshold: float
    ks_threshold: float
    outlier_rate_threshold: float
    mlflow_run_id: str


def _png(fig) -> str:
    # Fixed margins: tight_layout would measure every label first, half the cost of a figure.
    fig.subplots_adjust(left=0.2, right=0.97, bottom=0.3, top=0.88, wspace=0.45)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(png: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{png}" alt="{html.escape(alt)}">'


def _number(value: Optional[float], digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _exact(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def _shown_bins(d: Distribution) -> tuple[list[str], list[float], list[float]]:
    current = d.current or [0.0] * len(d.reference)
    if d.kind == "numeric" or len(d.labels) <= MOST_BARS:
        return d.labels, d.reference, current
    order = sorted(range(len(d.labels)), key=lambda i: (-max(d.reference[i], current[i]), d.labels[i]))
    keep = sorted(order[:MOST_BARS - 1])
    rest = [i for i in range(len(d.labels)) if i not in set(keep)]
    return ([d.labels[i] for i in keep] + [f"{len(rest)} other bins"],
            [d.reference[i] for i in keep] + [sum(d.reference[i] for i in rest)],
            [current[i] for i in keep] + [sum(current[i] for i in rest)])


def _distribution_figure(d: Distribution, f: FeatureDrift, drifted: bool) -> str:
    panels = 2 if d.kind == "numeric" and d.edges else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1.5, 3.2), squeeze=False)
    labels, reference, current = _shown_bins(d)
    ax = axes[0][0]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], reference, width=0.4, label=f"reference ({d.reference_count:,})", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], current, width=0.4, label=f"this range ({d.current_count:,})", color="#dd8452")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("share of values")
    ax.set_title(f"{f.feature}: shares per bin (PSI {f.psi:.3f})" + (" DRIFTED" if drifted else ""), fontsize=9)
    ax.legend(fontsize=7)
    if panels == 2:
        ax = axes[0][1]
        ax.step(d.edges, d.reference_cdf, where="post", label="reference", color="#4c72b0")
        if d.current_cdf:
            ax.step(d.edges, d.current_cdf, where="post", label="this range", color="#dd8452")
        ax.set_ylim(0, 1)
        ax.set_xlabel(f.feature, fontsize=8)
        ax.set_ylabel("share at or below")
        ax.set_title(f"CDF at the reference's deciles (KS {f.ks:.3f})" if f.ks is not None else "CDF", fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


def _statistics_figure(features: Sequence[FeatureDrift], psi_threshold: float, ks_threshold: float) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = [f.feature for f in features]
    left.barh(names, [f.psi for f in features], color=["#c44e52" if f.psi > psi_threshold else "#4c72b0"
                                                       for f in features])
    left.axvline(psi_threshold, color="black", linestyle="--", label=f"psi_threshold {psi_threshold:g}")
    left.set_title("PSI per feature", fontsize=9)
    left.legend(fontsize=7)
    numeric = [f for f in features if f.ks is not None]
    right.barh([f.feature for f in numeric], [f.ks or 0.0 for f in numeric],
               color=["#c44e52" if (f.ks or 0.0) > ks_threshold else "#4c72b0" for f in numeric])
    right.axvline(ks_threshold, color="black", linestyle="--", label=f"ks_threshold {ks_threshold:g}")
    right.set_title("KS statistic per numeric feature", fontsize=9)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    return _png(fig)


def _history_figure(history: Sequence[WindowResult], outlier_rate_threshold: float) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
    x = list(range(len(history)))
    labels = [w.start for w in history]
    for name, values, style in (("realized rmse", [w.rmse for w in history], "o-"),
                                ("holdout rmse", [w.holdout_rmse for w in history], "--"),
                                ("realized mae", [w.mae for w in history], "s-")):
        points = [(i, v) for i, v in zip(x, values) if v is not None]
        if points:
            left.plot([i for i, _ in points], [v for _, v in points], style, label=name)
    left.set_title("Realized error per window (trips with a known fare)", fontsize=9)
    shares = [(i, w.outlier_share) for i, w in zip(x, history) if w.outlier_share is not None]
    right.plot([i for i, _ in shares], [v for _, v in shares], "o-", color="#8172b3", label="outlier share")
    right.axhline(outlier_rate_threshold, color="black", linestyle="--",
                  label=f"outlier_rate_threshold {outlier_rate_threshold:g}")
    right.set_title("Outlier share per window", fontsize=9)
    for ax in (left, right):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}
tr.drifted td{background:#fbe3e4}.status{font-weight:bold}img{max-width:100%;display:block;margin:.5em 0}"""


def render(header: ReportHeader, features: Sequence[FeatureDrift], drifted: Iterable[str],
           shapes: dict[str, Distribution], history: Sequence[WindowResult]) -> str:
    """The report's HTML: a header, the per-feature table and statistics chart, the recent windows, and each
    feature's reference against the range."""
    drifted = set(drifted)
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Drift report: {e(header.model_name)} "
           f"v{e(header.model_version)} {e(header.start)}..{e(header.end)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>Drift report: {e(header.model_name)} version {e(header.model_version)}</h1>",
           f'<p>Range {e(header.start)} to {e(header.end)} (end excluded), {header.rows:,} scored rows. Status: '
           f'<span class="status" id="status">{e(header.status)}</span>. MLflow run {e(header.mlflow_run_id)}.</p>',
           f"<p>A feature has drifted when its PSI is above {header.psi_threshold:g} or its KS statistic above "
           f"{header.ks_threshold:g}. The reference is the model's training profile (its holdout).</p>",
           "<h2>Per feature</h2>", '<table id="drift"><tr><th>feature</th><th>kind</th><th>PSI</th><th>KS</th>'
           "<th>chi-square p-value</th><th>null share</th><th>drifted</th></tr>"]
    for f in features:
        is_drifted = f.feature in drifted
        out.append(f'<tr class="{"drifted" if is_drifted else "ok"}" data-feature="{e(f.feature)}" '
                   f'data-psi="{_exact(f.psi)}" data-ks="{_exact(f.ks)}" data-drifted="{str(is_drifted).lower()}">'
                   f"<td>{e(f.feature)}</td><td>{e(f.kind)}</td><td>{_number(f.psi)}</td><td>{_number(f.ks)}</td>"
                   f"<td>{_number(f.chi2_pvalue)}</td><td>{_number(f.null_share)}</td>"
                   f"<td>{'DRIFTED' if is_drifted else 'no'}</td></tr>")
    out.append("</table>")
    if features:
        out.append(_img(_statistics_figure(features, header.psi_threshold, header.ks_threshold),
                        "PSI and KS per feature with the thresholds"))
    out.append("<h2>Recent windows of this model version</h2>")
    if history:
        out.append('<table id="windows"><tr><th>window</th><th>realized rmse</th><th>holdout rmse</th>'
                   "<th>realized mae</th><th>outlier share</th></tr>")
        for w in history:
            out.append(f"<tr><td>{e(w.start)}..{e(w.end)}</td><td>{_number(w.rmse)}</td>"
                       f"<td>{_number(w.holdout_rmse)}</td><td>{_number(w.mae)}</td>"
                       f"<td>{_number(w.outlier_share)}</td></tr>")
        out.append("</table>")
        out.append(_img(_history_figure(history, header.outlier_rate_threshold),
                        "realized error and outlier share per window"))
    else:
        out.append("<p>No window of this model version has a realized error or outlier share yet.</p>")
    out.append("<h2>Reference against this range</h2>")
    for f in features:
        if f.feature in shapes:
            out.append(f"<h3>{e(f.feature)}</h3>")
            out.append(_img(_distribution_figure(shapes[f.feature], f, f.feature in drifted),
                            f"{f.feature}: reference against this range"))
    out.append("</body></html>")
    return "\n".join(out)
