"""The curation report as one self-contained HTML page, for a person to read instead of report.json.

Everything is inline: the CSS, each thumbnail as a base64 PNG data URI, and the 2-D
embedding map as a PNG drawn with matplotlib, so the file can be mailed, archived
or opened from an artifact store with no server, no network and no JavaScript.
Every string that comes from the report (paths, reasons, names) is HTML-escaped;
an image that no longer opens gets a placeholder instead of breaking the page.

Example:
    >>> write_report_page(report, images_root, out / "report.html", embedding_map=(paths, xy))
"""

from __future__ import annotations

import base64
import io
import json
import logging
from html import escape
from pathlib import Path
from string import Template

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ssl_core.curation.selection import SUBSET_METRIC_MEANINGS

logger = logging.getLogger(__name__)

THUMB_PX = 96  # longest side of a thumbnail; CIFAR's 32 px images are upscaled 3x, pixel for pixel

# Map categories, drawn in this order (later on top); a point takes the first that applies in MAP_PRIORITY.
MAP_STYLE = {  # category: (colour, marker size)
    "kept": ("#b0b0b0", 5),
    "selected": ("#2ca02c", 12),
    "dropped": ("#ff7f0e", 12),
    "outlier": ("#9467bd", 18),
    "leaked": ("#d62728", 22),
}
MAP_PRIORITY = ("leaked", "outlier", "dropped", "selected", "kept")

NAV = [  # (section id, link text), in page order
    ("duplicates", "Duplicates"),
    ("leaks", "Leaks"),
    ("quality", "Quality"),
    ("outliers", "Outliers"),
    ("selection", "Selection"),
    ("dropped", "Dropped"),
    ("map", "Map"),
]

CSS = Template("""
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#f5f6f8;margin:0}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
header{background:#263238;color:#fff;padding:18px 24px}
header h1{margin:0 0 4px;font-size:24px}header p{margin:0;color:#cfd8dc}
nav{max-width:1240px;margin:0 auto;padding:8px 24px;font-size:13px}nav a{margin-right:14px;color:#1565c0}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 18px 16px;margin:14px 0}
h2{margin:0 0 8px;font-size:18px}h3{margin:12px 0 6px;font-size:15px}
.note{color:#666;font-size:12.5px;margin:0 0 8px}.none{color:#888;font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:20px}.card span{color:#555;font-size:12px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.group{display:flex;flex-wrap:wrap;align-items:flex-start;gap:6px;padding:6px 0;border-top:1px solid #eee}
.label{width:100%;font-size:12px;color:#555}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:${thumb}px}figure img,.missing{display:block;width:${thumb}px;height:${thumb}px;
object-fit:contain;background:#eceff1;image-rendering:pixelated;border:2px solid transparent;box-sizing:border-box}
figure.dropped img,figure.dropped .missing{border-color:#e53935}
.missing{display:flex;align-items:center;justify-content:center;color:#b71c1c;font-size:11px;text-align:center}
figcaption{font-size:10.5px;line-height:1.25;color:#444;max-height:2.5em;overflow:hidden;overflow-wrap:anywhere}
.issues{display:flex;flex-wrap:wrap;column-gap:36px}.issues>div{flex:0 1 auto;min-width:180px}
.pair{display:flex;align-items:center;gap:10px;font-size:12px;overflow-wrap:anywhere}
table{border-collapse:collapse}
td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:middle}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.more{width:100%;color:#555;font-size:12.5px;margin:6px 0 0}
img.map{max-width:100%;height:auto}pre{font-size:12px;background:#f5f6f8;padding:8px;overflow:auto}
""").substitute(thumb=THUMB_PX)


def write_report_page(
    report: dict,
    images_root: Path,
    out_path: Path,
    embedding_map: tuple[list[str], np.ndarray] | None = None,
    max_groups: int = 50,
    max_per_issue: int = 24,
) -> Path:
    """Writes ``report`` (the curate stage's report.json) as one self-contained HTML page.

    Args:
        report: the report dict; its paths are relative to ``images_root``.
        images_root: the dataset folder (where manifest.csv lies).
        out_path: the .html file to write.
        embedding_map: ``(paths, xy)``, the (M, 2) coordinates of the images to plot;
            each point is coloured by what the report says of its image.
        max_groups: duplicate groups and leaks shown per list; the rest are counted.
        max_per_issue: thumbnails per quality issue, outlier list, selection and group.

    Returns:
        ``out_path``.

    Raises:
        ValueError: if the map's paths and coordinates differ in number, or xy is not (M, 2).
    """
    page = _Page(report, Path(images_root), max_groups, max_per_issue)
    body = "".join(
        [
            page.duplicates(),
            page.leaks(),
            page.quality(),
            page.outliers(),
            page.selection(),
            page.dropped(),
            _map_section(report, embedding_map),
            _parameters(report),
        ]
    )
    embedder = report.get("embedder") or {}
    nav = "".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in NAV)
    splits = ", ".join(f"{escape(str(s))} {n:,}" for s, n in (report.get("splits") or {}).items())
    html_text = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Curation report</title><style>{CSS}</style></head><body>"
        f"<header><h1>Curation report</h1><p>{report.get('num_images', 0):,} images ({splits}) · "
        f"embedder {escape(str(embedder.get('spec', '?')))} ({escape(str(embedder.get('dim', '?')))} dims)</p></header>"
        f"<nav>{nav}</nav>"
        f"<main>{_counts(report.get('counts') or {})}{body}</main></body></html>\n"
    )
    out_path = Path(out_path)
    out_path.write_text(html_text, encoding="utf-8")
    return out_path


class _Page:
    """The sections with thumbnails; each image is read once, however often it appears."""

    def __init__(self, report: dict, images_root: Path, max_groups: int, max_per_issue: int) -> None:
        self.report = report
        self.images_root = images_root
        self.max_groups = max_groups
        self.max_per_issue = max_per_issue
        self.dropped_reasons: dict[str, str] = report.get("dropped") or {}
        self._uris: dict[str, str | None] = {}

    def thumb(self, path: str, caption: str) -> str:
        if path not in self._uris:
            self._uris[path] = _thumbnail_uri(self.images_root / path)
        uri = self._uris[path]
        reason = self.dropped_reasons.get(path)
        title = escape(path + (f" (dropped: {reason})" if reason else ""))
        image = f'<img src="{uri}" alt="{escape(path)}">' if uri else '<div class="missing">cannot open image</div>'
        css = ' class="dropped"' if reason else ""
        caption = escape(caption).replace("/", "/<wbr>")  # a long path breaks after a folder, not mid-name
        return f'<figure{css} title="{title}">{image}<figcaption>{caption}</figcaption></figure>'

    def pair(self, path: str) -> str:
        """A thumbnail with its full path beside it."""
        return f'<div class="pair">{self.thumb(path, "")}<span>{escape(path)}</span></div>'

    def thumbs(self, paths: list[str], scores: dict[str, float] | None = None) -> str:
        shown = paths[: self.max_per_issue]
        captions = [f"{scores[p]:.3g}" if scores and p in scores else _short(p) for p in shown]
        return "".join(self.thumb(p, c) for p, c in zip(shown, captions, strict=True)) + _more(
            len(paths) - len(shown), "images"
        )

    def groups(self, groups: list[list[str]], similarities: list[float] | None) -> str:
        if not groups:
            return '<p class="none">none found</p>'
        rows = []
        for i, group in enumerate(groups[: self.max_groups]):
            label = _plural(len(group), "image")
            if similarities is not None and i < len(similarities):
                label += f" · similarity ≥ {similarities[i]:.3f}"
            rows.append(f'<div class="group"><div class="label">{label}</div>{self.thumbs(group)}</div>')
        return "".join(rows) + _more(len(groups) - self.max_groups, "groups")

    def duplicates(self) -> str:
        exact = self.report.get("exact_duplicates") or []
        near = self.report.get("near_duplicates") or []
        return (
            '<section id="duplicates"><h2>Duplicates</h2><p class="note">Each row is one group; a red outline '
            "marks the images dropped, the others are kept.</p>"
            f'<div class="cols"><div><h3>Exact duplicates: {_plural(len(exact), "group")}</h3>'
            f"{self.groups(exact, None)}</div>"
            f"<div><h3>Near duplicates: {_plural(len(near), 'group')}</h3>"
            f"{self.groups(near, self.report.get('near_duplicate_similarity'))}</div></div></section>"
        )

    def leaks(self) -> str:
        leaks = self.report.get("leakage") or []
        rows = "".join(
            f"<tr><td>{self.pair(leak['train'])}</td><td>{self.pair(leak['test'])}</td>"
            f'<td class="num">{leak["similarity"]:.3f}</td></tr>'
            for leak in leaks[: self.max_groups]
        )
        table = (
            f"<table><tr><th>train image</th><th>test image</th><th class=num>similarity</th></tr>{rows}</table>"
            if leaks
            else '<p class="none">none found</p>'
        )
        return (
            '<section id="leaks"><h2>Train/test leaks</h2><p class="note">Test images that (nearly) '
            f"repeat a train image, so they inflate test scores.</p>{table}"
            f"{_more(len(leaks) - self.max_groups, 'leaks')}</section>"
        )

    def quality(self) -> str:
        flagged = self.report.get("quality") or {}
        scores = self.report.get("quality_scores") or {}
        thresholds = self.report.get("quality_thresholds") or {}
        parts = []
        for issue, paths in flagged.items():
            threshold = f", threshold {thresholds[issue]:.3g}" if issue in thresholds else ""
            content = f'<div class="grid">{self.thumbs(paths, scores.get(issue))}</div>' if paths else ""
            parts.append(f"<div><h3>{escape(issue)}: {len(paths):,} flagged{threshold}</h3>{content}</div>")
        return (
            '<section id="quality"><h2>Quality issues</h2><p class="note">Worst first, captioned with '
            f"their score (higher is worse).</p><div class=issues>{''.join(parts)}</div>"
            f"{'' if parts else '<p class=none>none found</p>'}</section>"
        )

    def outliers(self) -> str:
        paths = self.report.get("outliers") or []
        content = (
            f'<div class="grid">{self.thumbs(paths, self.report.get("outlier_scores"))}</div>'
            if paths
            else '<p class="none">none found</p>'
        )
        return (
            '<section id="outliers"><h2>Outliers</h2><p class="note">Images far from all others in embedding space, '
            f"worst first, captioned with their mean distance to their nearest neighbours.</p>{content}</section>"
        )

    def selection(self) -> str:
        selection = self.report.get("selection")
        if not selection:
            return '<section id="selection"><h2>Selection</h2><p class="none">none requested</p></section>'
        metrics = selection.get("metrics") or {}
        picked, random = metrics.get("selected") or {}, metrics.get("random") or {}
        rows = "".join(
            f"<tr><td>{escape(name)}</td><td class=num>{picked[name]:.4f}</td>"
            f"<td class=num>{random.get(name, float('nan')):.4f}</td>"
            f"<td>{SUBSET_METRIC_MEANINGS.get(name, '')}</td></tr>"
            for name in picked
        )
        paths = selection.get("paths") or []
        return (
            f'<section id="selection"><h2>Selection: {selection.get("size", len(paths)):,} images by '
            f"{escape(str(selection.get('strategy', '?')))}</h2>"
            "<table><tr><th>metric</th><th class=num>selected</th><th class=num>random</th><th></th></tr>"
            f'{rows}</table><h3>First picks</h3><div class="grid">{self.thumbs(paths)}</div></section>'
        )

    def dropped(self) -> str:
        counts = (self.report.get("counts") or {}).get("dropped") or {}
        rows = "".join(
            f"<tr><td>{escape(reason)}</td><td class=num>{n:,}</td></tr>"
            for reason, n in sorted(counts.items(), key=lambda item: -item[1])
        )
        table = (
            f"<table><tr><th>reason</th><th class=num>images</th></tr>{rows}"
            f"<tr><th>total</th><th class=num>{sum(counts.values()):,}</th></tr></table>"
            if counts
            else '<p class="none">none dropped</p>'
        )
        return f'<section id="dropped"><h2>Dropped images by reason</h2>{table}</section>'


def _counts(counts: dict) -> str:
    cards = [
        ("images", counts.get("images", 0)),
        ("kept", counts.get("kept", 0)),
        ("dropped", sum((counts.get("dropped") or {}).values())),
        ("exact duplicate groups", counts.get("exact_duplicate_groups", 0)),
        ("near duplicate groups", counts.get("near_duplicate_groups", 0)),
        ("leaked test images", counts.get("leaked_test_images", 0)),
        ("outliers", counts.get("outliers", 0)),
        *((f"quality: {issue}", n) for issue, n in (counts.get("quality") or {}).items()),
    ]
    body = "".join(f'<div class="card"><b>{n:,}</b><span>{escape(label)}</span></div>' for label, n in cards)
    return f'<section id="counts"><h2>Counts</h2><div class="cards">{body}</div></section>'


def _map_section(report: dict, embedding_map: tuple[list[str], np.ndarray] | None) -> str:
    if embedding_map is None or len(embedding_map[0]) == 0:
        return '<section id="map"><h2>Embedding map</h2><p class="none">no map computed</p></section>'
    paths, xy = embedding_map[0], np.asarray(embedding_map[1])
    if xy.shape != (len(paths), 2):
        raise ValueError(f"embedding_map has {len(paths)} paths, so xy must be ({len(paths)}, 2); got {xy.shape}")
    categories = map_categories(report, paths)
    fig = Figure(figsize=(10, 7))  # no pyplot: no global state, no display needed
    ax = fig.subplots()
    for category, (colour, size) in MAP_STYLE.items():
        mask = categories == category
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=colour, label=f"{category} ({mask.sum():,})", lw=0)
    ax.set(xticks=[], yticks=[], title=f"t-SNE of {len(paths):,} of {report.get('num_images', len(paths)):,} images")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=1.5, frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        '<section id="map"><h2>Embedding map</h2><p class="note">Each point is an image; nearby points have similar '
        "embeddings (t-SNE keeps neighbourhoods, not distances between clusters). Leaked marks both images of a "
        f'train/test pair.</p><img class="map" src="{uri}" alt="t-SNE map of the embeddings"></section>'
    )


def map_categories(report: dict, paths: list[str]) -> np.ndarray:
    """(M,) category of each path for the map: the first of :data:`MAP_PRIORITY` that applies."""
    members = {
        "leaked": {p for leak in report.get("leakage") or [] for p in (leak["train"], leak["test"])},
        "outlier": set(report.get("outliers") or []),
        "dropped": set(report.get("dropped") or {}),
        "selected": set((report.get("selection") or {}).get("paths") or []),
    }
    return np.array([next((c for c in MAP_PRIORITY[:-1] if p in members[c]), "kept") for p in paths], dtype=object)


def _parameters(report: dict) -> str:
    text = json.dumps(report.get("thresholds") or {}, indent=2, sort_keys=True)
    return f"<section><details><summary>Parameters used</summary><pre>{escape(text)}</pre></details></section>"


def _thumbnail_uri(path: Path) -> str | None:
    """A PNG data URI of the image at most THUMB_PX on its longer side, or None when it does not open."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG decodes straight to a smaller size
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        logger.warning("report page: cannot open %s (%s: %s)", path, type(error).__name__, error)
        return None
    factor = THUMB_PX // max(rgb.size)
    if factor >= 2:
        # Whole-pixel upscaling keeps a tiny image's pixels crisp squares instead of a blur.
        rgb = rgb.resize((rgb.width * factor, rgb.height * factor), Image.Resampling.NEAREST)
    else:
        rgb.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(path: str) -> str:
    """The last two parts of a path (class folder and file name), for a caption under 96 px."""
    return "/".join(path.split("/")[-2:])


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _more(hidden: int, what: str) -> str:
    return f'<p class="more">… and {hidden:,} more {what} (see report.json)</p>' if hidden > 0 else ""
