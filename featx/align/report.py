"""``featx report``: for every ``featx align`` result under a directory, a heat map (models ordered
by family, then size), an alignment-vs-model-size plot, the paper's view (alignment against language
models' 1 − bits per byte, where the language side's files carry ``bpb``), the best pair's
layer×layer map when the run kept them (``--layers all``), and one ``index.html`` that ties them
together."""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.align.results import load_results
from featx.errors import UsageError


def find_results(out: Path, skip: Path | None = None) -> list[tuple[Path, dict]]:
    """Every ``featx align`` result under ``out``, from its pickle-free ``.npz`` (the ``.npy``
    dicts beside them are never loaded: unpickling a file placed there could run its code)."""
    found = []
    for path in sorted(out.rglob("*.npz")):
        if path.name.startswith(".") or (skip and skip in path.parents):
            continue
        data = load_results(path)
        if data is not None and "scores" in data and "models_x" in data:
            found.append((path, data))
    return found


def _order(ids, families, params) -> list[int]:
    return sorted(range(len(ids)), key=lambda i: (str(families[i]), int(params[i] or 0), ids[i]))


def _short(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1]


def _self_mask(data: dict) -> np.ndarray:
    """True where x and y are the same feature file (score 1 by construction)."""
    mx, my = len(data["models_x"]), len(data["models_y"])
    px, py = data.get("pool_x", [None] * mx), data.get("pool_y", [None] * my)
    return np.array([[data["models_x"][i] == data["models_y"][j] and px[i] == py[j] for j in range(my)]
                     for i in range(mx)], dtype=bool).reshape(mx, my)


def _title(data: dict) -> str:
    k = f" (k={data['topk']})" if data.get("topk") else ""
    floor = ", best floored at 0" if data.get("zero_floor") else ""
    return (f"{data['metric']}{k} on {data['dataset']}/{data['subset']}{floor}\n"
            f"{data.get('label_x', 'x')} vs {data.get('label_y', 'y')}")


def heatmap(data: dict, dest: Path) -> None:
    """Scores by model pair; with ``featx align --calibrate`` the calibrated scores beside the raw
    ones, pairs whose p-value is not below alpha marked "n.s."."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ox = _order(data["models_x"], data["family_x"], data["params_x"])
    oy = _order(data["models_y"], data["family_y"], data["params_y"])
    panels = [(data["metric"], np.asarray(data["scores"], dtype=float)[np.ix_(ox, oy)])]
    ns = None
    if "p_values" in data:
        ns = np.asarray(data["p_values"], dtype=float)[np.ix_(ox, oy)] >= data["alpha"]
        panels.append((f"calibrated (K={data['calibrate']}, alpha={data['alpha']})",
                       np.asarray(data["calibrated_scores"], dtype=float)[np.ix_(ox, oy)]))
    mx, my = panels[0][1].shape
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * max(5.0, 0.38 * my + 3.5), max(4.0, 0.32 * mx + 2.5)))
    for ax, (label, scores) in zip(axes[0], panels):
        im = ax.imshow(scores, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_xticks(range(my), [_short(data["models_y"][j]) for j in oy], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(mx), [_short(data["models_x"][i]) for i in ox], fontsize=8)
        ax.set_xlabel(f"{data.get('label_y', 'y')} (by family, then size)")
        ax.set_ylabel(f"{data.get('label_x', 'x')}")
        if mx * my <= 400:
            finite = scores[np.isfinite(scores)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0
            for i in range(mx):
                for j in range(my):
                    if np.isfinite(scores[i, j]):
                        mark = "\nn.s." if ns is not None and ns[i, j] else ""
                        ax.text(j, i, f"{scores[i, j]:.2f}{mark}", ha="center", va="center", fontsize=7,
                                color="black" if scores[i, j] > mid else "white")
        fig.colorbar(im, ax=ax, label=label)
    axes[0][0].set_title(_title(data), fontsize=9)
    if ns is not None:
        axes[0][1].set_title(f"calibrated; n.s.: p >= {data['alpha']} ({int(ns.sum())} of {ns.size} pairs)",
                             fontsize=9)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def size_plot(data: dict, dest: Path) -> None:
    """Per model: mean alignment to the other side (self pairs left out) against its parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.asarray(data["scores"], dtype=float).copy()
    scores[_self_mask(data)] = np.nan
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, side, other, mean in ((axes[0], "x", "y", np.nanmean(scores, axis=1) if scores.size else []),
                                  (axes[1], "y", "x", np.nanmean(scores, axis=0) if scores.size else [])):
        ids, fams, params = data[f"models_{side}"], data[f"family_{side}"], [int(p or 0) for p in data[f"params_{side}"]]
        use_log = all(p > 0 for p in params)
        xs = params if use_log else list(range(len(ids)))
        for fam in sorted(set(fams)):
            idx = sorted((i for i in range(len(ids)) if fams[i] == fam), key=lambda i: xs[i])
            ax.plot([xs[i] for i in idx], [mean[i] for i in idx], "o-", label=fam, markersize=5)
        if use_log:
            ax.set_xscale("log")
            ax.set_xlabel("parameters")
        else:
            ax.set_xlabel("model (parameter counts unknown)")
        ax.set_ylabel(f"mean {data['metric']} to {data.get('label_' + other, other)}")
        ax.set_title(f"{data.get('label_' + side, side)} models", fontsize=9)
        ax.grid(alpha=0.3)
        if len(set(fams)) <= 12:
            ax.legend(fontsize=7)
    fig.suptitle(_title(data), fontsize=9)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class QualityPoint:
    """One language model in the paper's view: its quality (1 − bpb) and its alignment."""

    model: str
    family: str
    quality: float
    score: float


MAX_QUALITY_PANELS = 4  # the mean, then up to three models of the other side one by one


def quality_points(data: dict) -> dict[str, list[QualityPoint]] | None:
    """The paper's view (Huh et al. 2024, Fig. 3: alignment to vision models against language
    models' performance): per panel — the mean over the other side's models, then each of its first
    models — every language model with a known ``bpb`` as (1 − bpb, its score). None when neither
    side's files carry ``bpb`` (results written before featx recorded it, or no language side)."""
    side = next((s for s in ("x", "y") if any(b is not None for b in data.get(f"bpb_{s}") or [])), None)
    if side is None:
        return None
    other = "y" if side == "x" else "x"
    scores = np.asarray(data["scores"], dtype=float).copy()
    scores[_self_mask(data)] = np.nan
    if side == "y":
        scores = scores.T  # rows: the language side
    bpb, fams, ids = data[f"bpb_{side}"], data[f"family_{side}"], data[f"models_{side}"]
    langs = [i for i, b in enumerate(bpb) if b is not None]
    others = data[f"models_{other}"]
    if len(others) == 1:
        panels = {others[0]: scores[:, 0]}
    else:
        with warnings.catch_warnings():  # a row of NaNs (only itself on the other side) has no mean
            warnings.simplefilter("ignore", RuntimeWarning)
            panels = {f"mean over {len(others)} {data.get('label_' + other, other)} models": np.nanmean(scores, axis=1)}
        panels.update({others[j]: scores[:, j] for j in range(min(len(others), MAX_QUALITY_PANELS - 1))})
    return {name: [QualityPoint(ids[i], str(fams[i]), 1 - float(bpb[i]), float(ys[i])) for i in langs]
            for name, ys in panels.items()}


def quality_plot(data: dict, dest: Path) -> bool:
    """Draw :func:`quality_points`: one panel per entry, one line per family (labelled legend)."""
    panels = quality_points(data)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.2), squeeze=False)
    metric = data["metric"] + (f" (k={data['topk']})" if data.get("topk") else "")
    for ax, (name, points) in zip(axes[0], panels.items()):
        for fam in sorted({p.family for p in points}):
            line = sorted((p for p in points if p.family == fam), key=lambda p: p.quality)
            ax.plot([p.quality for p in line], [p.score for p in line], "o-", label=fam, markersize=5)
        ax.set_xlabel("language model performance: 1 − bits per byte")
        ax.set_ylabel(f"{metric} alignment")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(title="language family", fontsize=7, title_fontsize=7)
    fig.suptitle(_title(data), fontsize=9)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return True


def best_pair(data: dict) -> tuple[int, int] | None:
    scores = np.asarray(data["scores"], dtype=float).copy()
    scores[_self_mask(data)] = np.nan
    if not np.isfinite(scores).any():
        return None
    i, j = np.unravel_index(np.nanargmax(scores), scores.shape)
    return int(i), int(j)


def layer_plot(data: dict, i: int, j: int, dest: Path) -> bool:
    mats = data.get("layer_scores")
    if mats is None or mats[i, j] is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(mats[i, j], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(m, cmap="viridis", aspect="auto", origin="lower", interpolation="nearest")
    ax.set_ylabel(f"{_short(data['models_x'][i])} layer")
    ax.set_xlabel(f"{_short(data['models_y'][j])} layer")
    # rows/columns are the stored layers; their labels the model's layer numbers (--layers keeps some)
    rows_x = (data.get("layer_indices_x") or [None] * (i + 1))[i] or list(range(m.shape[0]))
    cols_y = (data.get("layer_indices_y") or [None] * (j + 1))[j] or list(range(m.shape[1]))
    if data["layer_x"][i][j] >= 0:
        ax.plot([cols_y.index(data["layer_y"][i][j])], [rows_x.index(data["layer_x"][i][j])], "r+", markersize=12)
    if rows_x == list(range(m.shape[0])) and cols_y == list(range(m.shape[1])):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.set_yticks(range(len(rows_x)), [str(v) for v in rows_x], fontsize=7)
        ax.set_xticks(range(len(cols_y)), [str(v) for v in cols_y], fontsize=7)
    fig.colorbar(im, ax=ax, label=data["metric"])
    ax.set_title(f"{data['metric']}: every layer pair of the best model pair", fontsize=9)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return True


def _layer(value) -> str:
    """A best layer, or a dash where no layer pair scored above the zero floor (stored as -1)."""
    return str(int(value)) if value >= 0 else "—"


def _top_rows(data: dict, top: int) -> list[tuple]:
    scores = np.asarray(data["scores"], dtype=float)
    mask = _self_mask(data)
    rows = [(scores[i, j], i, j) for i in range(scores.shape[0]) for j in range(scores.shape[1])
            if not mask[i, j] and math.isfinite(scores[i, j])]
    sign = 1 if data.get("kind") == "distance" else -1  # best first: smallest distance, largest similarity
    return sorted(rows, key=lambda r: sign * r[0])[:top]


def _calibration_cells(data: dict, i: int, j: int) -> str:
    if "p_values" not in data:
        return ""
    p = float(data["p_values"][i][j])
    ns = " (n.s.)" if p >= data["alpha"] else ""
    return f"<td>{float(data['calibrated_scores'][i][j]):.4f}</td><td>{p:.3g}{ns}</td>"


def write_report(out: Path, report_dir: Path | None = None, top: int = 10) -> Path:
    report_dir = report_dir or out / "report"
    results = find_results(out, skip=report_dir) if out.is_dir() else []
    if not results:
        raise UsageError(f"no `featx align` results under {out}; run `featx align --out {out} ...` first")
    report_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for path, data in results:
        rel = path.relative_to(out)
        slug = "__".join(rel.with_suffix("").parts).replace(" ", "_")
        files = {"heat": f"{slug}_heatmap.png", "size": f"{slug}_size.png", "layers": f"{slug}_layers.png",
                 "quality": f"{slug}_quality.png"}
        heatmap(data, report_dir / files["heat"])
        size_plot(data, report_dir / files["size"])
        quality_img = (f'<figure><img src="{files["quality"]}" alt="alignment vs language model performance">'
                       "<figcaption>The paper's view: each language model's alignment (the mean over the other "
                       "side, then model by model) against its performance on the data set's texts, 1 − bits per "
                       "byte.</figcaption></figure>"
                       if quality_plot(data, report_dir / files["quality"]) else "")
        bp = best_pair(data)
        has_layers = bool(bp) and layer_plot(data, *bp, report_dir / files["layers"])
        rows = "".join(
            f"<tr><td>{s:.4f}</td><td>{html.escape(data['models_x'][i])}</td><td>{_layer(data['layer_x'][i][j])}</td>"
            f"<td>{html.escape(data['models_y'][j])}</td><td>{_layer(data['layer_y'][i][j])}</td>"
            f"{_calibration_cells(data, i, j)}</tr>"
            for s, i, j in _top_rows(data, top))
        links = [f'<a href="{html.escape(_relpath(p, report_dir))}">{html.escape(p.name)}</a>'
                 for p in (path.with_suffix(".npy"), path, path.with_suffix(".csv")) if p.exists()]
        meta = (f"{len(data['models_x'])} × {len(data['models_y'])} models, {data.get('num_rows')} rows, "
                f"rows fingerprint <code>{html.escape(str(data.get('rows_fingerprint', ''))[:16])}</code>, "
                f"revision {html.escape(str(data.get('dataset_revision') or '-'))}, layers: {data.get('layers', 'best')}")
        calib_head = "<th>calibrated</th><th>p-value</th>" if "p_values" in data else ""
        layers_img = (f'<figure><img src="{files["layers"]}" alt="layer map of the best pair">'
                      f"<figcaption>Every layer pair of the best model pair (+ marks the best).</figcaption></figure>"
                      if has_layers else "")
        sections.append(f"""
<section>
<h2>{html.escape(_title(data)).replace(chr(10), '<br>')}</h2>
<p>{meta}<br>{' · '.join(links)}</p>
<figure><img src="{files['heat']}" alt="alignment heat map"><figcaption>Best score over all layer pairs of each
model pair; rows and columns ordered by family, then size.</figcaption></figure>
<figure><img src="{files['size']}" alt="alignment vs model size"><figcaption>Each model's mean alignment to the
other side against its parameter count.</figcaption></figure>
{quality_img}
{layers_img}
<table><tr><th>score</th><th>model x</th><th>layer</th><th>model y</th><th>layer</th>{calib_head}</tr>{rows}</table>
</section>""")
    page = report_dir / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>featx alignment report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1200px; color: #222; }}
section {{ border-top: 1px solid #ccc; padding-top: 1rem; margin-top: 2rem; }}
img {{ max-width: 100%; }} figure {{ margin: 1rem 0; }} figcaption {{ color: #555; font-size: 0.9em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }}
</style></head><body>
<h1>featx alignment report</h1>
<p>{len(results)} result(s) from <code>{html.escape(str(out))}</code>. Scores follow the reference's definitions
(platonic-rep): features clamped at the 0.95 quantile of |x|, each layer L2-normalised, every layer pair scored, best kept
(floored at 0 as the reference unless the run said --no-zero-floor; a pair with no layer above 0 scores 0).</p>
{''.join(sections)}
</body></html>
""")
    return page


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
