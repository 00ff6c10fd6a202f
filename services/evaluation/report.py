"""The run's report: ``report.json`` (the run document) and ``report.html``, one self-contained page (inline SVG
plots drawn by matplotlib, no external file, script or font) with the scores, a plot of them, the latencies, a
robustness curve per score when the run degraded the images, the lineage and every image's misses.

The page marks itself once the browser has laid the plots out: ``<body data-plots="N" data-plots-rendered="M">``
(M = plots whose drawing has a non-empty bounding box), which the test reads from headless Chromium.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any, Optional

# (section, key, label, higher is better)
SCORES = (
    ("barcodes", "decode_rate", "barcode decode rate", True),
    ("barcodes", "recall", "barcode recall (by value)", True),
    ("barcodes", "precision", "barcode precision (by value)", True),
    ("text_lines", "cer", "OCR character error rate", False),
    ("text_lines", "exact_line_recall", "OCR exact-line recall", True),
    ("objects", "precision", "objects precision @IoU 0.5", True),
    ("objects", "recall", "objects recall @IoU 0.5", True),
    ("objects", "mean_iou", "objects mean IoU", True),
    ("checks", "accuracy", "check accuracy", True),
    ("checks", "unparsed_rate", "check unparsed rate", False),
)


def score_of(metrics: dict[str, Any], section: str, key: str) -> Optional[float]:
    return (metrics.get(section) or {}).get(key)


def scores(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, value) of every headline score the pass has (check scores only where checks were answered)."""
    answered = (metrics.get("checks") or {}).get("answered", False)
    return [(label, v) for section, key, label, _ in SCORES
            if (v := score_of(metrics, section, key)) is not None and (section != "checks" or answered)]


def write_reports(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    html_path.write_text(render_html(doc))
    return json_path, html_path


def curves(doc: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """score label -> degradation -> [(strength, value)], strength 0 being the clean pass."""
    clean, degraded = doc["metrics"]["clean"], doc["metrics"]["degraded"]
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    shown = {label for label, _ in scores(clean)}
    for section, key, label, _ in SCORES:
        base = score_of(clean, section, key)
        if label not in shown or not degraded:
            continue
        out[label] = {name: [(0, base)] + [(int(s), score_of(m, section, key)) for s, m in sorted(levels.items())
                                           if score_of(m, section, key) is not None]
                      for name, levels in degraded.items()}
    return out


# ---- plots ----------------------------------------------------------------------------------------------------
def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inline in the page


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "vlwatch"  # stable element ids: the same run draws the same SVG
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: no glyph outlines, a smaller page
    import matplotlib.pyplot as plt

    return plt


def scores_plot(metrics: dict[str, Any]) -> str:
    plt = _pyplot()
    items = scores(metrics)
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(items) + 0.8))
    ax.barh([label for label, _ in items][::-1], [v for _, v in items][::-1], color="#1d78e6")
    for i, (_, v) in enumerate(items[::-1]):
        ax.text(min(v, 1.0) + 0.01, i, f"{v:.3f}", va="center", fontsize=9)
    ax.set_xlim(0, 1.12)
    ax.set_title("scores on the clean images")
    return _svg(fig)


def latency_plot(timings: dict[str, Any]) -> str:
    plt = _pyplot()
    names = list(timings["analyzers"])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.0))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [timings["analyzers"][n]["p50_s"] * 1000 for n in names], 0.4, label="p50")
    ax.barh([y - 0.2 for y in ys], [timings["analyzers"][n]["p95_s"] * 1000 for n in names], 0.4, label="p95")
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("ms per image")
    ax.legend()
    ax.set_title("latency per analyzer (clean images)")
    return _svg(fig)


def curve_plot(label: str, lines: dict[str, list[tuple[int, float]]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for name, points in lines.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    ax.set_xlabel("strength")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


# ---- the page -------------------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(name: str, svg: str) -> str:
    return f'<figure class="plot" data-plot="{html.escape(name)}">{svg}</figure>'


def render_html(doc: dict[str, Any]) -> str:
    clean = doc["metrics"]["clean"]
    parts = [f"<h1>Evaluation of {html.escape(doc['set']['name'])} with profile {html.escape(doc['profile'])}</h1>",
             f"<p>{doc['set']['images']} images, set digest <code>{doc['set']['digest'][:16]}</code>, analyzers "
             f"{html.escape(', '.join(doc['analyzers']))}; settings <code>{html.escape(json.dumps(doc['settings']))}"
             "</code></p>", "<h2>Scores</h2>",
             _table(["score", "value"], [[label, v] for label, v in scores(clean)])]
    plots = []
    if scores(clean):
        plots.append(_figure("scores", scores_plot(clean)))
    if "barcodes" in clean:
        b = clean["barcodes"]
        parts.append("<h3>Barcodes by format</h3>" + _table(
            ["format", "symbols", "decoded", "decode rate"],
            [[f, v["symbols"], v["decoded"], v["decode_rate"]] for f, v in b["by_format"].items()]))
        parts.append(f"<p>wrong values read: {b['wrong_values']}</p>")
    if "objects" in clean:
        parts.append("<h3>Objects by label</h3>" + _table(
            ["label", "truth", "predicted", "matched", "precision", "recall", "mean IoU", "AP50"],
            [[k, v["truth"], v["predicted"], v["matched"], v["precision"], v["recall"], v["mean_iou"], v["ap50"]]
             for k, v in clean["objects"]["by_label"].items()]))
    if "checks" in clean:
        note = "" if clean["checks"]["answered"] else (
            "<p>No analyzer of this profile answers checks: every labelled check counts as unanswered.</p>")
        parts.append("<h3>Checks</h3>" + note + _table(
            ["check", "labelled", "correct", "unparsed", "unanswered", "accuracy"],
            [[k, v["labelled"], v["correct"], v["unparsed"], v["unanswered"], v["accuracy"]]
             for k, v in clean["checks"]["by_check"].items()]))
    timings = doc["timings"]
    parts.append("<h2>Speed</h2>" + _table(
        ["analyzer", "p50 ms", "p95 ms", "mean ms"],
        [[n, t["p50_s"] * 1000, t["p95_s"] * 1000, t["mean_s"] * 1000] for n, t in timings["analyzers"].items()]))
    if timings["images_per_s"]:
        parts.append(f"<p>{timings['images_per_s']:.2f} images/s over the analyzers' time, one image at a time.</p>")
        plots.append(_figure("latency", latency_plot(timings)))
    robustness = curves(doc)
    if robustness:
        parts.append("<h2>Robustness</h2>")
        rows = []
        for label, lines in robustness.items():
            plots.append(_figure(f"curve: {label}", curve_plot(label, lines)))
            rows += [[label, name] + [v for _, v in points] for name, points in lines.items()]
        parts.append(_table(["score", "degradation", "clean", "1", "2", "3"], rows))
    parts.append('<h2>Plots</h2><div class="plots">' + "".join(plots) + "</div>")
    parts.append("<h2>Lineage</h2>" + _table(
        ["analyzer", "engine", "version", "model", "checkpoint", "prompt", "settings"],
        [[x["analyzer"], x["engine"], x["version"], x["model_id"], x["checkpoint_digest"], x["prompt"],
          json.dumps(x["settings"])] for x in doc["lineage"]]))
    misses = [[i["file_name"], "; ".join(i["missed_barcodes"]), "; ".join(i["wrong_barcodes"]), i["error"]]
              for i in doc["images"] if i["missed_barcodes"] or i["wrong_barcodes"] or i["error"]]
    if misses:
        parts.append("<h2>Images with misses</h2>" + _table(["image", "barcodes missed", "wrong reads", "error"],
                                                           misses))
    return PAGE.format(title=html.escape(f"vlwatch eval: {doc['set']['name']}"), plots=len(plots),
                       body="\n".join(parts))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure.plot {{ margin: 0; border: 1px solid #eee; }}
figure.plot svg {{ display: block; max-width: 100%; height: auto; }}
</style></head>
<body data-plots="{plots}" data-plots-rendered="0">
{body}
<script>
window.addEventListener("load", function () {{
  var drawn = 0;
  document.querySelectorAll("figure.plot svg").forEach(function (svg) {{
    var box = svg.getBBox();
    if (box.width > 0 && box.height > 0) {{ drawn += 1; }}
  }});
  document.body.dataset.plotsRendered = String(drawn);
}});
</script>
</body></html>
"""
