"""The review report of a real (small, seeded) run, opened in a headless browser.

Runs `neardup pairs` on seeded embeddings of generated images (no model needed), then
loads report/index.html in Debian's `chromium` from file:// with every network request
sent to a closed proxy port. Without a browser the tests skip, except under CI (the
environment variable CI set), where they fail: .ci/run installs chromium.
"""

import html.parser
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neardup_core import cli
from neardup_core.evaluation import read_truth_csv, score_pairs

pytestmark = pytest.mark.spark

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
DIM = 16
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = f"no headless browser found ({', '.join(BROWSERS)}); apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render_in_browser(page, tmp_path):
    """(DOM after load, console lines) of ``page`` in headless chromium; any network
    request goes to a closed port."""
    proc = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--proxy-server=127.0.0.1:9", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


class Dom(html.parser.HTMLParser):
    """The elements the tests read: thumbnails, groups, pairs, body attributes, and text."""

    def __init__(self, text):
        super().__init__()
        self.images, self.groups, self.pairs, self.body, self.text = [], [], 0, {}, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "img":
            self.images.append(attrs)
        elif tag == "body":
            self.body = attrs
        elif tag == "div" and "group" in classes:
            self.groups.append(attrs)
        elif tag == "div" and "pair" in classes:
            self.pairs += 1

    def handle_data(self, data):
        self.text.append(data)


def jpeg(rng, size):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).resize(
        (size[0] * 4, size[1] * 4), Image.Resampling.NEAREST).save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Images and seeded embeddings: three groups (one holding the hostile file name, one a
    file that is gone), a borderline pair, three loners and a row with no vector."""
    root = tmp_path_factory.mktemp("report-catalog")
    rng = np.random.default_rng(17)
    base = rng.normal(size=(8, DIM))
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def near(v, cosine):  # a unit vector at exactly `cosine` to unit vector v
        other = rng.normal(size=DIM)
        other -= other @ v * v
        other /= np.linalg.norm(other)
        return cosine * v + np.sqrt(1 - cosine**2) * other

    rows = [("a0.jpg", base[0]), (HOSTILE, near(base[0], 0.98)), ("a2.jpg", near(base[0], 0.95)),
            ("b0.jpg", base[1]), ("b1.jpg", near(base[1], 0.9)),
            ("c0.jpg", base[2]), ("gone.jpg", near(base[2], 0.97)),
            ("d0.jpg", base[3]), ("d1.jpg", near(base[3], 0.72)),
            ("e.jpg", base[4]), ("f.jpg", base[5]), ("g.jpg", base[6])]
    table = []
    for k, (name, vector) in enumerate(rows):
        path = root / name
        size = (40 + 4 * k, 30 + 2 * k)
        if name != "gone.jpg":
            path.write_bytes(jpeg(rng, size))
        table.append({"id": name, "path": str(path), "embedding": vector.astype(np.float32).tolist(),
                      "width": size[0] * 4, "height": size[1] * 4,
                      "bytes": path.stat().st_size if path.exists() else 0})
    table.append({"id": "nan.jpg", "path": str(root / "nan.jpg"), "embedding": [float("nan")] * DIM,
                  "width": None, "height": None, "bytes": None})
    pd.DataFrame(table).to_parquet(root / "embeddings.parquet")
    truth = root / "truth.csv"
    truth.write_text("file,group,role,transform\n" + "".join(
        f"{name},{'d' + name[0] if name[0] == 'd' else name[0]},original,\n" for name, _ in rows))
    return root


@pytest.fixture(scope="module")
def run(spark, catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-run") / "out"
    assert cli.main(["pairs", "--embeddings", str(catalog / "embeddings.parquet"), "--output", str(out),
                     "--set", "report.max_pairs=3", "--set", "report.thumbnail_px=64"]) == 0
    return out


def test_run_writes_a_report_that_loads_cleanly_in_a_browser(run, tmp_path):
    manifest = json.loads((run / "_manifest.json").read_text())
    assert manifest["report"]["written"] is True, manifest["report"]
    page = run / "report" / "index.html"
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?[a-z]+://""", text, re.I)  # nothing to fetch
    dom_text, console = render_in_browser(page, tmp_path)
    assert console == []  # no script errors, no blocked requests or scripts (CSP)
    dom = Dom(dom_text)
    assert dom.body.get("data-loaded") == "true"  # the page's own script ran
    # Every image on the page is a thumbnail that decoded.
    assert dom.images and all("thumb" in i["class"].split() for i in dom.images)
    assert all(int(i["data-natural-width"]) > 0 for i in dom.images), dom.images
    assert all(re.fullmatch(r"thumbs/[0-9a-f]{32}\.jpg", i["src"]) for i in dom.images)
    # As many groups and pairs as the outputs hold (pairs: up to report.max_pairs).
    groups = pq.read_table(run / "groups").to_pandas()
    pairs = pq.read_table(run / "pairs").to_pandas()
    assert len(dom.groups) == groups.group_id.nunique() == 4
    assert sorted(int(g["data-size"]) for g in dom.groups) == sorted(groups.groupby("group_id").size())
    assert dom.pairs == min(len(pairs), 3) and len(pairs) > 3
    borderline = pairs.assign(gap=(pairs.cosine - 0.7).abs()).sort_values(["gap", "id_a", "id_b"]).head(3)
    ends = [*groups.id, *borderline.id_a, *borderline.id_b]
    assert len(dom.images) == sum(i != "gone.jpg" for i in ends)  # a file that is gone has no thumbnail
    # The hostile name is text, and ran nothing.
    body_text = "".join(dom.text)
    assert HOSTILE in body_text
    assert not [i for i in dom.images if i.get("src") == "x"]
    assert "no thumbnail: no such file" in body_text
    assert "embedding" in body_text and "nan.jpg" in body_text  # the error row, by stage
    assert f"Showing 3 of {len(pairs)} pairs" in body_text


def test_report_command_rebuilds_with_the_truth(run, catalog, tmp_path, capsys):
    folder = tmp_path / "again"
    assert cli.main(["report", "--run", str(run), "--output", str(folder), "--truth", str(catalog / "truth.csv"),
                     "--set", "report.max_groups=2"]) == 0
    assert "report of 2 of 4 groups" in capsys.readouterr().out
    dom_text, console = render_in_browser(folder / "index.html", tmp_path)
    assert console == []
    dom = Dom(dom_text)
    assert len(dom.groups) == 2 and all(int(i["data-natural-width"]) > 0 for i in dom.images)
    pairs = pq.read_table(run / "pairs").to_pandas()
    expected = score_pairs(zip(pairs.id_a, pairs.id_b), read_truth_csv(str(catalog / "truth.csv")))
    text = "".join(dom.text)
    assert "Showing the 2 largest of 4 groups" in text
    assert re.search(rf"precision\s*{expected.precision:.3f}", text) and re.search(rf"recall\s*{expected.recall:.3f}",
                                                                                  text)
    assert sorted(os.listdir(tmp_path)) == ["again", "profile"]
    # Without --output: the run's own report/, replaced whole, nothing left beside it.
    before = set(os.listdir(run))
    assert cli.main(["report", "--run", str(run)]) == 0
    assert set(os.listdir(run)) == before and (run / "report" / "index.html").exists()


def test_a_report_failure_does_not_fail_the_run(spark, catalog, tmp_path, monkeypatch):
    import neardup_core.report

    def broken(*args, **kwargs):
        raise RuntimeError("no disk for thumbnails")

    monkeypatch.setattr(neardup_core.report, "build", broken)
    out = tmp_path / "out"
    assert cli.main(["pairs", "--embeddings", str(catalog / "embeddings.parquet"), "--output", str(out)]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["report"] == {"written": False, "error": "RuntimeError: no disk for thumbnails"}
    assert (out / "_SUCCESS").exists() and not (out / "report").exists()
    assert manifest["counts"]["pairs"] == len(pq.read_table(out / "pairs"))
