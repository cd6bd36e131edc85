"""The extraction benchmark end to end: for each model of the mode, featx and the reference loop
interleaved on the WIT-like lengths (the headline), plus the sensitivity table (every
distribution of ``inputs.DISTRIBUTIONS``) on one model; results written after each case."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.extract.cases import (CPU_LANGUAGE, CPU_VISION, GPU_LANGUAGE, GPU_VISION, TINY_LANGUAGE, TINY_VISION,
                                 LanguageCase, VisionCase)
from bench.extract.inputs import DISTRIBUTIONS, WIT_LIKE
from bench.extract.language import bench_model
from bench.extract.vision import bench_vision
from bench.machine import RESULTS, device_slug, provenance, write_results
from bench.report import extraction


@dataclass(frozen=True)
class Mode:
    """What one run covers. ``n`` of ``dataset_size`` captions per language run (the reference
    pads to the longest of all ``dataset_size``); ``sensitivity``: the case that runs every length
    distribution (a rotary model, so that featx and the reference must agree)."""

    name: str
    language: tuple[LanguageCase, ...]
    vision: tuple[VisionCase, ...]
    n: int
    dataset_size: int
    n_vision: int
    sensitivity: str
    vision_default: bool


# cpu: about 6 minutes on 2 idle cores (the reference's long-tail runs are the largest part). gpu:
# 256 of 1,024 rows (the reference's cost per row does not depend on how many run, since it pads to
# the whole set's longest caption), so that every distribution and 3 rounds fit a 15-minute loan.
MODES = {
    "quick": Mode("quick", TINY_LANGUAGE, TINY_VISION, 12, 64, 6, "tiny-llama", True),
    "cpu": Mode("cpu", CPU_LANGUAGE, CPU_VISION, 32, 1024, 16, "llama-style-134m", False),
    "gpu": Mode("gpu", GPU_LANGUAGE, GPU_VISION, 256, 1024, 256, "llama-7b", True),
}


def default_out(mode: Mode, device: str) -> Path:
    """Quick runs (harness checks) go to ``bench/results/quick/`` (git-ignored), never over the
    committed results that the README's table is generated from."""
    return RESULTS / ("quick" if mode.name == "quick" else "") / f"extract-{device_slug(device)}.json"


def run(mode: str = "cpu", device: str = "cpu", repeats: int = 3, n: int | None = None,
        models: list[str] | None = None, vision: bool | None = None, out: str | None = None,
        batch_size: int | None = None, token_budget: int | None = None, truth: bool | None = None,
        num_workers: int | None = None, also_plans: tuple[tuple[int, int], ...] = ()) -> dict[str, Any]:
    """Run ``mode``'s cases and return the results (also written to ``out``)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; run `make bench` (CPU) instead")
    m = MODES[mode]
    lang = [c for c in m.language if not models or c.name in models]
    vis = [c for c in m.vision if (m.vision_default if vision is None else vision) and (not models or c.name in models)]
    n_lang = min(n or m.n, m.dataset_size)
    path = Path(out) if out else default_out(m, device)
    results: dict[str, Any] = {
        **provenance(device),
        "settings": {"mode": mode, "device": device, "repeats": repeats, "schedule": "interleaved: featx, reference, ...",
                     "n_language": n_lang, "dataset_size": m.dataset_size, "n_vision": n or m.n_vision,
                     "featx_batch_size": batch_size or "featx default", "token_budget": token_budget or "featx default",
                     "reference_batch_size": 4, "pool": "avg (language), cls (vision)",
                     "headline_distribution": WIT_LIKE.name, "sensitivity_model": m.sensitivity,
                     "caption_corpus": "none available in a package here: lengths are drawn, see bench/extract/inputs.py"},
        "language": [], "vision": [],
    }
    options = {"batch_size": batch_size, "token_budget": token_budget, "truth": truth, "also_plans": also_plans}
    for case in lang:
        dists = DISTRIBUTIONS if case.name == m.sensitivity else (WIT_LIKE,)
        print(f"[bench] {case.name}: {n_lang} of {m.dataset_size} texts on {device}, "
              f"{', '.join(d.name for d in dists)}, {repeats} interleaved rounds ...", flush=True)
        try:
            recs = bench_model(case, device, dists, n_lang, m.dataset_size, repeats, **options)
        except Exception as e:  # noqa: BLE001 - one failing case does not lose the others
            recs = [{"model": case.name, "error": f"{type(e).__name__}: {e}"[:500]}]
            _free(device)
        for rec in recs:
            results["language"].append(rec)
            print(summary_line(rec), flush=True)
        write_results(path, results)
    for case in vis:
        print(f"[bench] {case.name}: {n or m.n_vision} images on {device} ...", flush=True)
        try:
            rec = bench_vision(case, device, n or m.n_vision, repeats, batch_size, num_workers)
        except Exception as e:  # noqa: BLE001
            rec = {"model": case.name, "error": f"{type(e).__name__}: {e}"[:500]}
            _free(device)
        results["vision"].append(rec)
        print(summary_line(rec), flush=True)
        write_results(path, results)
    write_results(path, results)
    print("\n".join(["", *extraction(path.stem, results), ""]))
    print(f"[bench] results written to {path}; README section: python -m bench.report --update-readme")
    return results


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def summary_line(rec: dict[str, Any]) -> str:
    """One line per finished case: medians, the ratio and its run-by-run range."""
    if "error" in rec:
        return f"[bench] {rec['model']}: ERROR {rec['error']}"
    fx, rf, r = rec["featx"]["seconds"], rec["reference"]["seconds"], rec["ratio"]["wall"]
    dist = f" [{rec['distribution']['name']}]" if "distribution" in rec else ""
    line = (f"[bench] {rec['model']}{dist}: featx {fx['median']:.2f}s ({fx['min']:.2f}-{fx['max']:.2f}), "
            f"reference {rf['median']:.2f}s ({rf['min']:.2f}-{rf['max']:.2f}), "
            f"ratio {r['of_medians']:.2f}x ({r['pairs_min']:.2f}-{r['pairs_max']:.2f})")
    if "cpu" in rec["ratio"]:
        line += f", CPU-time ratio {rec['ratio']['cpu']['of_medians']:.2f}x"
    if "padding_factor" in rec:
        line += f", padding factor {rec['padding_factor']:.2f}, other {rec['other_factor']:.2f}"
    return line
