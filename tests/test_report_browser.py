"""``featx report``'s index.html in a real browser (headless Chromium, Debian's package): it renders,
every image decodes at the size of its PNG, every link resolves to a file, the console is silent.

A harness page beside the report frames it and, once everything has loaded, writes what the browser
saw (each image's natural size, each link's resolved URL, the page's headings) into its own DOM,
which ``--dump-dom`` prints; the sizes and files are then checked here, with PIL and the filesystem.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from featx.cli.main import main
from featx.store.local import LocalStore
from tests.test_align import _model_feats, commit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LANGUAGE = {"featx-smoke/gpt2": 1.25, "featx-smoke/llama": 0.875}  # bits per byte: the quality plot too
VISION = ["featx-smoke/vit", "featx-smoke/dinov2"]
METRICS = ["mutual_knn", "cka"]

HARNESS = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="report" src="index.html" style="width:1280px;height:2000px"></iframe>
<script>
window.addEventListener("load", () => {
  const doc = document.getElementById("report").contentDocument;
  const seen = {
    title: doc.title,
    h1: [...doc.querySelectorAll("h1")].map(e => e.textContent),
    sections: doc.querySelectorAll("section").length,
    rows: doc.querySelectorAll("section table tr").length,
    height: doc.body.scrollHeight,
    images: [...doc.images].map(i => ({src: i.src, complete: i.complete, width: i.naturalWidth,
                                       height: i.naturalHeight, shown: i.getBoundingClientRect().width})),
    links: [...doc.querySelectorAll("a[href]")].map(a => a.href),
  };
  document.getElementById("result").textContent = JSON.stringify(seen);
});
</script></body></html>
"""


@pytest.fixture()
def report(tmp_path: Path) -> Path:
    """A report of two metrics over synthetic features committed through the store (as
    tests/test_align_report.py builds its report): heat maps, size, quality and layer plots."""
    latent = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    store = LocalStore(tmp_path / "features")
    for n, model in enumerate([*LANGUAGE, *VISION]):
        commit(store, model, _model_feats(n + 20, 30, 2, 12, latent), bpb=LANGUAGE.get(model))
    out = tmp_path / "alignment"
    assert main(["align", "--output_dir", str(tmp_path / "features"), "--dataset", "featx-sample", "--models",
                 *LANGUAGE, *VISION, "--x", "language", "--y", "vision", "--metric", *METRICS, "--topk", "5",
                 "--layers", "all", "--out", str(out), "--quiet"]) == 0
    assert main(["report", "--out", str(out)]) == 0
    return out / "report" / "index.html"


def _browse(page: Path, profile: Path) -> tuple[dict, list[str]]:
    """What Chromium saw of ``page`` (through the harness) and its console lines."""
    harness = page.with_name("harness.html")
    harness.write_text(HARNESS)
    p = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                        "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()],
                       capture_output=True, text=True, timeout=120)
    harness.unlink()
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'<pre id="result">(.*?)</pre>', p.stdout, re.S)
    assert m and m[1] != "pending", f"the harness never saw the report load: {p.stdout[:2000]}"
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    return json.loads(html.unescape(m[1])), console


def _file(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", url
    return Path(unquote(parsed.path))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
def test_report_renders_in_chromium_with_every_image_and_link_resolved(report: Path, tmp_path: Path):
    from PIL import Image

    seen, console = _browse(report, tmp_path / "chromium-profile")
    assert console == [], f"console messages while the report loaded: {console}"
    assert seen["title"] == "featx alignment report" and seen["h1"] == ["featx alignment report"]
    assert seen["sections"] == len(METRICS) and seen["height"] > 1000
    assert seen["rows"] == len(METRICS) * (1 + len(LANGUAGE) * len(VISION))  # header + every pair

    pngs = sorted(report.parent.glob("*.png"))
    assert len(pngs) == 4 * len(METRICS)  # heat map, size, quality and layer plot per metric
    assert sorted(_file(i["src"]) for i in seen["images"]) == pngs, "each plot shown once, nothing else"
    for img in seen["images"]:
        assert img["complete"] and img["width"] > 0 and img["shown"] > 0, f"the browser shows no image: {img}"
        with Image.open(_file(img["src"])) as png:
            assert (img["width"], img["height"]) == png.size, img  # decoded whole

    links = [_file(href) for href in seen["links"]]
    assert len(links) == 3 * len(METRICS)  # .npy, .npz, .csv of each result
    missing = [str(p) for p in links if not p.is_file()]
    assert not missing, f"links to nothing: {missing}"
    assert {p.suffix for p in links} == {".npy", ".npz", ".csv"}
