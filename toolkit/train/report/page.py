"""report.html: one self-contained page (inline CSS, pictures as data: URIs, no script, no external URL).
Every name and label goes through html.escape, so a label such as <script> reads as text."""
from __future__ import annotations

import os
from html import escape

import toolkit.train.report.images as images

ROWS = 200  # rows shown per data health table; the rest are counted
THUMBS = 80  # thumbnails in the data health and mislabel sections, in all

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#8a5300;background:#fff7e6;padding:4px 8px;border-left:3px solid #f0a020;margin:4px 0}
.head{font-size:1.1em}.head b{font-size:1.3em}.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;padding:6px;width:272px;font-size:12px;word-break:break-all}
.card img{width:128px;height:128px;image-rendering:pixelated}.bad{color:#b00}
.thumb{width:48px;height:48px;max-width:48px;max-height:48px;object-fit:contain;margin-right:4px;vertical-align:middle}
img.fig{max-width:100%}
"""


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return escape(str(value))


def page(data: dict, pictures: dict) -> str:
    """The HTML of the report `data` (report.json's content) with its `pictures` (data: URIs)."""
    parts = [header(data), per_class(data), confusion(data, pictures), gallery(data, pictures),
             mislabels(data, pictures), health(data, pictures), unreadable(data), curves(pictures)]
    title = escape(f"toolkit report: {data['run'] or data['model']}")
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>"
            f"<meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")


def notes(lines) -> str:
    return "".join(f"<p class=note>{escape(str(line))}</p>" for line in lines)


def header(data: dict) -> str:
    s = data.get("scores")
    head = (f"<p class=head>top-1 <b>{s['top1']:.2f}%</b> &nbsp; top-5 <b>{s['top5']:.2f}%</b> &nbsp; mean "
            f"per-class {s['mean_per_class']:.2f}% &nbsp; on {s['n']} images of the {escape(data['split'])} split"
            "</p>") if s else ""
    return (f"<h1>Report: {escape(str(data['run'] or data['model']))}</h1><p>model: {escape(data['model'])}</p>"
            + head + notes(data["notes"] + [data["calibration"]["note"]]))


def table(columns: list, rows: list, numeric=()) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns) if any(columns) else ""
    body = "".join("<tr>" + "".join(f"<td class=n>{cell(v)}</td>" if i in numeric else f"<td>{v}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def per_class(data: dict) -> str:
    s, counts = data.get("scores"), data.get("class_counts")
    out = ""
    if s:
        rows = [[escape(r["label"]), r["precision"], r["recall"], r["f1"], r["support"]] for r in s["per_class"]]
        out += "<h2>Per class</h2>" + table(["class", "precision %", "recall %", "F1 %", "support"], rows,
                                            numeric=(1, 2, 3, 4))
        pairs = [[escape(p["true"]), escape(p["predicted"]), p["count"]] for p in s["most_confused"]]
        out += "<h2>Most confused</h2>" + (table(["true", "predicted as", "images"], pairs, numeric=(2,))
                                           if pairs else "<p>no confusions</p>")
    if counts:
        rows = [[escape(label)] + [counts[s_][i] for s_ in counts] for i, label in enumerate(data["labels"])]
        out += "<h2>Class balance (images per split)</h2>" + table(["class", *counts], rows, numeric=(1, 2, 3))
    return out


def confusion(data: dict, pictures: dict) -> str:
    if "confusion" not in pictures:
        return ""
    return ("<h2>Confusion matrix</h2><p>rows: true class, columns: predicted</p>"
            f"<img class=fig alt='confusion matrix' src='{pictures['confusion']}'>")


def gallery(data: dict, pictures: dict) -> str:
    rows = data.get("top_losses") or []
    if not rows:
        return ""
    cards = []
    for row in rows:
        thumb, cam = pictures["gallery"].get(row["index"], (None, None))
        imgs = "".join(f"<img alt='{alt}' src='{src}'>" for alt, src in (("image", thumb), ("Grad-CAM", cam)) if src)
        wrong = " class=bad" if row["predicted"] != row["true"] else ""
        cards.append(f"<div class=card>{imgs or '<p class=bad>unreadable</p>'}<div>{escape(row['path'])}</div>"
                     f"<div>true <b>{escape(row['true'])}</b> ({row['true_score']:.2f}) &middot; predicted "
                     f"<b{wrong}>{escape(row['predicted'])}</b> ({row['score']:.2f}) &middot; loss "
                     f"{row['loss']:.2f}</div></div>")
    return (f"<h2>Top losses</h2>{notes([data['saliency']])}<p>left: the image as the model sees it; right: "
            "Grad-CAM of the predicted class (red: where its score comes from)</p>"
            f"<div class=grid>{''.join(cards)}</div>")


def thumbed(value, pictures: dict) -> str:
    """A cell: an image path with its thumbnail (while the budget lasts), lists one item a line; an image
    entry ({path, split, label}: duplicates, near pairs, leaks) its thumbnail with the rest as short text."""
    if isinstance(value, list):
        return "<br>".join(thumbed(v, pictures) for v in value)
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            rest = ", ".join(str(v) for k, v in value.items() if k != "path")
            return thumbed(value["path"], pictures) + (f" ({escape(rest)})" if rest else "")
        return escape(", ".join(f"{k}: {v}" for k, v in value.items()))
    text = cell(value)
    if isinstance(value, str) and value.lower().endswith(images.EXTENSIONS):
        uri = pictures["thumbs"].get(value)
        if uri:
            return f"<img class=thumb alt='' src='{uri}'>{text}"
    return text


def any_table(value, pictures: dict) -> str:
    """A data health section of any plain-JSON shape as a table."""
    if isinstance(value, dict):
        rows = list(value.items())
        if rows and all(isinstance(v, dict) for _, v in rows):
            columns = list(dict.fromkeys(k for _, v in rows for k in v))
            return table(["", *columns], [[escape(str(k))] + [thumbed(v.get(c), pictures) for c in columns]
                                          for k, v in rows])
        return table(["", ""], [[escape(str(k)), thumbed(v, pictures)] for k, v in rows])
    if not isinstance(value, list):
        return f"<p>{thumbed(value, pictures)}</p>"
    if not value:
        return "<p>none found</p>"
    more = f"<p>and {len(value) - ROWS} more (report.json has them all)</p>" if len(value) > ROWS else ""
    shown = value[:ROWS]
    if all(isinstance(r, dict) for r in shown):
        columns = list(dict.fromkeys(k for r in shown for k in r))
        return table(columns, [[thumbed(r.get(c), pictures) for c in columns] for r in shown]) + more
    return table([""] * max(len(r) if isinstance(r, list) else 1 for r in shown),
                 [[thumbed(v, pictures) for v in (r if isinstance(r, list) else [r])] for r in shown]) + more


def health(data: dict, pictures: dict) -> str:
    got = data["data_health"]
    if "sections" not in got:
        return "<h2>Data health</h2>" + notes([got["note"]])
    return "<h2>Data health</h2>" + "".join(f"<h3>{escape(name.replace('_', ' '))}</h3>{any_table(v, pictures)}"
                                            for name, v in got["sections"].items())


def mislabels(data: dict, pictures: dict) -> str:
    got = data["mislabels"]
    if "rows" not in got:
        return "<h2>Likely mislabelled</h2>" + notes([got["note"]])
    columns = ["path", "label", "suggested", "score"]
    return ("<h2>Likely mislabelled (training images, most suspect first)</h2>"
            + any_table([{c: r.get(c) for c in columns} for r in got["rows"]], pictures))


def unreadable(data: dict) -> str:
    rows = data.get("unreadable") or []
    if not rows:
        return ""
    return "<h2>Unreadable images (skipped)</h2>" + table(["image", "why"], [[escape(p), escape(r)]
                                                                            for p, r in rows])


def curves(pictures: dict) -> str:
    if "curves" not in pictures:
        return ""
    return f"<h2>Training curves</h2><img class=fig alt='training curves' src='{pictures['curves']}'>"
