"""The report as one self-contained HTML page: the ranking, every measure with its CI, salience
overlays of the same images across candidates, noise and deletion curves, the stability matrices
and the provenance.

Everything is inline (CSS, SVG charts, PNG overlays as ``data:`` URIs); the page runs no script and
makes no request, so it opens offline, can be mailed or attached to a CI run, and passes a strict
Content-Security-Policy (``default-src 'none'; img-src data:; style-src 'unsafe-inline'``).

Pure Python on the report dict (no numpy, no torch): the API renders it without loading the domain.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

# Okabe-Ito: distinguishable with the common colour-vision deficiencies (yellow left out: unreadable on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")

_FAMILIES: tuple[tuple[str, str, str], ...] = (
    # (name prefix, title, how to read it)
    ("entropy.", "Salience entropy", "How spread out the salience map is. Lower: the model looks at fewer places."),
    ("oos.noise", "Reaction to noise", "How salience holds up as salt-and-pepper noise is added (area under the "
     "mean-SSIM curve). Higher: the maps degrade more gracefully."),
    ("oos.set", "Out-of-set shift", "Entropy on out-of-set images minus entropy in-set. No preferred direction."),
    ("geometry.", "Geometric consistency", "Does salience move with the image under flips, rotations and shifts? "
     "Higher: it follows the content."),
    ("stability.", "Stability across runs", "Similarity of the salience maps of independently trained runs. "
     "Higher: the recipe, not the seed, decides where the model looks."),
    ("degradation.", "Salience-guided degradation", "Score drop when the most vs the least salient pixels are "
     "removed or blurred. Higher: the salient pixels really drive the decision."),
    ("agreement.", "Agreement with people", "How well salience matches human annotation masks. Higher: "
     "the model looks where people look."),
    ("accuracy", "Accuracy", "Classification performance, for context."),
)

_MEASURE_NOTES = {
    "entropy.spatial": "spatial entropy of the native map",
    "entropy.histogram": "entropy of the 8-bit value histogram (paper)",
    "oos.noise": "area under the SSIM curve (paper)",
    "oos.set": "out-of-set minus in-set entropy",
    "geometry.ssim": "SSIM after undoing the transform",
    "geometry.pearson": "Pearson r after undoing the transform",
    "stability.ssim": "mean pairwise SSIM of 8-bit maps (paper)",
    "stability.pearson": "mean pairwise Pearson r",
    "degradation.deletion": "AUC(LeRF) - AUC(MoRF) of deletion curves",
    "degradation.blur": "drop(object blurred) - drop(background blurred) (paper)",
    "agreement.human": "Pearson r of map and mask",
    "agreement.human.ssim": "SSIM of map and mask",
    "agreement.human.mass": "share of salience inside the mask",
}

_CURVE_AXES = {
    "oos.noise": ("amount", "share of pixels replaced by salt-and-pepper noise"),
    "degradation.deletion": ("k", "pixels deleted (%)"),
}
_CURVE_TITLES = {
    "score": "target-class score",
    "entropy": "salience entropy",
    "ssim": "SSIM to the clean map",
    "morf": "MoRF: most salient deleted first",
    "lerf": "LeRF: least salient deleted first",
    "random": "random order",
}


# -- formatting ------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any) -> str:
    """A number for people: 3 significant digits (at least 3 decimals), scientific when tiny or huge, a
    dash when missing."""
    if not _finite(x):
        return "—"
    x = float(x)
    if x == 0:
        return "0"
    ax = abs(x)
    if ax < 1e-4 or ax >= 1e5:
        return f"{x:.2e}"
    if ax >= 100:
        return f"{x:,.1f}"
    return f"{x:.{max(3, 2 - math.floor(math.log10(ax)))}f}"


def _ci_text(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _finite(ci[0]) and _finite(ci[1]):
        return f"{fmt(ci[0])} … {fmt(ci[1])}"
    return "no CI"


def _family_of(name: str) -> int:
    for i, (prefix, _, _) in enumerate(_FAMILIES):
        if name.startswith(prefix) or name == prefix.rstrip("."):
            return i
    return len(_FAMILIES)


def _measure_order(names: Sequence[str], variants: Mapping[str, str]) -> list[str]:
    rank = {"default": 0, "paper": 1, "extra": 2}
    return sorted(names, key=lambda n: (_family_of(n), rank.get(variants.get(n, ""), 3), n))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out, t = [], start
    while t <= hi + step * 1e-9:
        out.append(round(t, 12))
        t += step
    return out


def _tick_label(t: float, step: float) -> str:
    if t == 0:
        return "0"
    if abs(t) < 1e-3 or abs(t) >= 1e5:
        return f"{t:.1e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
    if decimals < 8 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{t:.{decimals}f}"


# -- the page --------------------------------------------------------------------------------------


class _Page:
    def __init__(self, report: Mapping[str, Any], overlays: Mapping[str, Any] | None,
                 images: Mapping[str, bytes] | None, job: Mapping[str, Any] | None, title: str | None) -> None:
        self.r = report
        self.overlays = overlays or {}
        self.images = images or {}
        self.job = job or {}
        self.cands = [c["name"] for c in report.get("candidates", [])]
        self.by_name = {c["name"]: c for c in report.get("candidates", [])}
        self.color = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(self.cands)}
        self.cmp = report.get("comparison") or {}
        self.cmp_measures: dict[str, Any] = self.cmp.get("measures") or {}
        variants: dict[str, str] = {}
        names: list[str] = []
        for c in report.get("candidates", []):
            for n, m in (c.get("measures") or {}).items():
                if n not in variants:
                    variants[n] = str(m.get("variant", ""))
                    names.append(n)
        self.variants = variants
        self.measures = _measure_order(names, variants)
        self.title = title or "Explain-to-Me evaluation report"

    # -- helpers -------------------------------------------------------------------------------
    def m(self, cand: str, name: str) -> Mapping[str, Any]:
        return (self.by_name.get(cand, {}).get("measures") or {}).get(name) or {}

    def direction(self, name: str) -> str | None:
        if name in self.cmp_measures:
            return self.cmp_measures[name]["direction"]
        for c in self.cands:
            d = self.m(c, name).get("direction")
            if d:
                return d
        return None

    def rank(self, cand: str, name: str) -> tuple[int, bool] | None:
        """(rank, everyone tied) of ``cand`` on ``name``; None when the measure is not ranked."""
        cm = self.cmp_measures.get(name)
        if not cm:
            return None
        ranks = {e["candidate"]: e["rank"] for e in cm["ranking"]}
        if cand not in ranks:
            return None
        return ranks[cand], len(set(ranks.values())) == 1

    def chip(self, cand: str) -> str:
        return f'<span class="chip"><i style="background:{self.color[cand]}"></i>{_e(cand)}</span>'

    def arrow(self, name: str) -> str:
        d = self.direction(name)
        if d == "higher":
            return '<span class="dir" title="higher is better">▲ higher</span>'
        if d == "lower":
            return '<span class="dir" title="lower is better">▼ lower</span>'
        return '<span class="dir muted" title="no preferred direction">–</span>'

    # -- sections ------------------------------------------------------------------------------
    def header(self) -> str:
        cfg = self.r.get("config") or {}
        ds = self.r.get("dataset") or {}
        ood = self.r.get("ood_dataset")
        bits = []
        if self.job.get("id"):
            bits.append(f"job <code>{_e(self.job['id'])}</code>")
        split = ds.get("split") or cfg.get("split")
        bits.append(
            f"dataset <code>{_e(cfg.get('dataset', '?'))}</code>"
            + (f" · split <b>{_e(split)}</b>" if split else "")
            + f" · <b>{_e(ds.get('n_images', '?'))}</b> images"
        )
        if ood:
            bits.append(f"out-of-set <code>{_e(cfg.get('ood_dataset', '?'))}</code> ({_e(ood.get('n_images', '?'))} "
                        "images)")
        bits.append(f"method <b>{_e(cfg.get('method', '?'))}</b> · seed {_e(cfg.get('seed', '?'))} · "
                    f"{_e(cfg.get('bootstrap_resamples', '?'))} bootstrap resamples")
        when = self.job.get("finished_at")
        if when:
            extra = " (from the result cache)" if self.job.get("cache_hit") else ""
            bits.append(f"finished {_e(str(when).replace('T', ' ')[:19])} UTC{extra}")
        chips = "".join(
            f'<span class="chip big"><i style="background:{self.color[c]}"></i>{_e(c)}'
            f'<small>{_e(self.by_name[c].get("n_runs", "?"))} runs</small></span>'
            for c in self.cands
        )
        return (
            f'<header class="hero"><div class="wrap"><div class="brand">Explain-to-Me</div>'
            f"<h1>{_e(self.title)}</h1><p class=\"meta\">{' · '.join(bits)}</p>"
            f'<div class="chips">{chips}</div></div></header>'
        )

    def nav(self) -> str:
        items = [("summary", "Summary"), ("ranking", "Ranking"), ("measures", "All measures")]
        if self.r.get("warnings"):
            items.insert(0, ("warnings", f"Warnings ({len(self.r['warnings'])})"))
        if self.overlays.get("overlays"):
            items.append(("overlays", "Salience overlays"))
        if self._curve_measures():
            items.append(("curves", "Curves"))
        if self._stability_measures():
            items.append(("stability", "Stability"))
        items.append(("provenance", "Provenance"))
        links = "".join(f'<a href="#{i}">{_e(t)}</a>' for i, t in items)
        return f'<nav class="toc"><div class="wrap">{links}</div></nav>'

    def summary(self) -> str:
        ranked = [n for n in self.measures if n in self.cmp_measures]
        wins = dict.fromkeys(self.cands, 0)
        for n in ranked:
            ranks = [e for e in self.cmp_measures[n]["ranking"]]
            if len({e["rank"] for e in ranks}) == 1:
                continue  # everyone tied: nobody wins it
            for e in ranks:
                if e["rank"] == 1:
                    wins[e["candidate"]] += 1
        pareto = list(self.cmp.get("pareto_set") or [])
        cards = []
        for c in self.cands:
            badge = '<span class="badge good">Pareto set</span>' if c in pareto else \
                '<span class="badge">dominated</span>'
            runs = self.by_name[c].get("n_runs", "?")
            acc = self.m(c, "accuracy").get("value")
            acc_txt = f"<div class=\"kv\"><span>accuracy</span><b>{fmt(acc)}</b></div>" if _finite(acc) else ""
            cards.append(
                f'<div class="card cand" style="border-top-color:{self.color[c]}">'
                f'<div class="cand-name">{self.chip(c)} {badge}</div>'
                f'<div class="kv"><span>ranked first on</span><b>{wins[c]} of {len(ranked)}</b></div>'
                f'<div class="kv"><span>training runs</span><b>{_e(runs)}</b></div>{acc_txt}</div>'
            )
        if len(self.cands) < 2:
            verdict = "One candidate: the measures describe it; there is nothing to rank it against."
        else:
            best = max(wins.values()) if wins else 0
            leaders = [c for c, w in wins.items() if w == best and best > 0]
            if not leaders:
                verdict = "No candidate is significantly better than another on any measure: they are tied."
            else:
                verdict = (f"{' and '.join(self.chip(c) for c in leaders)} "
                           f"{'is' if len(leaders) == 1 else 'are'} ranked first on the most measures "
                           f"({best} of {len(ranked)}).")
            if pareto:
                verdict += (f" Pareto set: {', '.join(self.chip(c) for c in pareto)} — no other candidate is "
                            "significantly better on one measure without being significantly worse on another.")
        return (
            f'<section id="summary"><h2>Summary</h2><p class="lead">{verdict}</p>'
            f'<div class="cards">{"".join(cards)}</div></section>'
        )

    def warnings_section(self) -> str:
        """Likely metadata mistakes, first thing after the header: numbers from wrong metadata are not to be read."""
        ws = list(self.r.get("warnings") or [])
        if not ws:
            return ""
        def who(c: str) -> str:
            return self.chip(c) if c in self.color else _e(c)

        rows = "".join(
            f'<tr><th scope="row">{who(str(w.get("candidate", "")))} <span class="muted">run '
            f'{_e(w.get("run", "?"))}</span></th><td><code>{_e(w.get("code", ""))}</code></td>'
            f'<td>{_e(w.get("message", ""))}<div class="fix"><b>Fix:</b> {_e(w.get("fix", ""))}</div></td></tr>'
            for w in ws
        )
        return (
            '<section id="warnings" class="warnings"><h2>Warnings</h2><p class="lead">The numbers say the metadata '
            "of these models is likely wrong; their measures may describe a misread model. Each warning names the "
            'likely fix (rules: docs/MODELS.md, "Metadata warnings").</p>'
            '<div class="scroll"><table><thead><tr><th>candidate</th><th>check</th><th>what and fix</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div></section>"
        )

    def ranking(self) -> str:
        ranked = [n for n in self.measures if n in self.cmp_measures]
        if not ranked:
            return ('<section id="ranking"><h2>Ranking</h2><p class="lead">No measure with a preferred direction '
                    "was computed for every candidate, so there is no ranking.</p></section>")
        rows = []
        for n in ranked:
            cm = self.cmp_measures[n]
            entries = cm["ranking"]
            all_tied = len({e["rank"] for e in entries}) == 1
            chips = []
            for e in entries:
                cls = "r1" if e["rank"] == 1 and not all_tied else "rn"
                tie = '<em title="statistically tied">=</em>' if e.get("tied_with") else ""
                chips.append(
                    f'<span class="rk {cls}"><b>#{e["rank"]}{tie}</b>{self.chip(e["candidate"])}'
                    f'<span class="v">{fmt(e.get("value"))}</span></span>'
                )
            diff = ""
            pds = cm.get("paired_differences") or []
            if len(pds) == 1:
                p = pds[0]
                diff = (f'{_e(p["a"])} − {_e(p["b"])} = <b>{fmt(p.get("mean_diff"))}</b> '
                        f'<span class="muted">[{_ci_text(p.get("ci"))}]</span>')
            elif pds:
                sig = sum(1 for p in pds if p.get("better"))
                diff = f'<span class="muted">{sig} of {len(pds)} pairs differ significantly</span>'
            rows.append(
                f'<tr><th scope="row">{_e(n)}<div class="note">{_e(_MEASURE_NOTES.get(n, ""))}</div></th>'
                f"<td>{self.arrow(n)}</td><td><div class=\"ranks\">{''.join(chips)}</div></td><td>{diff}</td></tr>"
            )
        return (
            '<section id="ranking"><h2>Ranking</h2><p class="lead">Rank 1 means no other candidate is significantly '
            "better on that measure: the 95% bootstrap CI of the paired, per-image difference excludes zero. "
            "Candidates sharing a rank (=) are statistically tied. Green marks a first place that is not a tie "
            "of everyone.</p>"
            '<div class="scroll"><table class="rank"><thead><tr><th>measure</th><th>better</th><th>ranking</th>'
            f'<th>paired difference (95% CI)</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>'
        )

    def forest(self, name: str) -> str:
        """Each candidate's value and 95% CI on one shared axis (a small inline SVG)."""
        pts = []
        for c in self.cands:
            m = self.m(c, name)
            v, ci = m.get("value"), m.get("ci")
            lo = ci[0] if isinstance(ci, (list, tuple)) and _finite(ci[0]) else v
            hi = ci[1] if isinstance(ci, (list, tuple)) and _finite(ci[1]) else v
            if _finite(v):
                pts.append((c, float(v), float(lo), float(hi)))
        if not pts:
            return ""
        lo = min(p[2] for p in pts)
        hi = max(p[3] for p in pts)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad
        w, row = 200, 12
        h = row * len(pts) + 6

        def x(val: float) -> float:
            return 4 + (w - 8) * (val - lo) / (hi - lo)

        parts = [f'<svg class="forest" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
                 f'aria-label="{_e(name)}: values and 95% CIs">']
        if lo < 0 < hi:
            parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="0" y2="{h}" class="zero"/>')
        for i, (c, v, a, b) in enumerate(pts):
            y = 6 + i * row
            col = self.color[c]
            parts.append(
                f'<g><title>{_e(c)}: {fmt(v)} (95% CI {fmt(a)} … {fmt(b)})</title>'
                f'<line x1="{x(a):.1f}" x2="{x(b):.1f}" y1="{y}" y2="{y}" stroke="{col}" stroke-width="2.5" '
                f'stroke-linecap="round"/><circle cx="{x(v):.1f}" cy="{y}" r="3.6" fill="{col}" '
                f'stroke="#fff" stroke-width="1"/></g>'
            )
        parts.append("</svg>")
        return "".join(parts)

    def measures_table(self) -> str:
        head = "".join(f"<th>{self.chip(c)}</th>" for c in self.cands)
        body = []
        last_family = None
        for n in self.measures:
            fam = _family_of(n)
            if fam != last_family and fam < len(_FAMILIES):
                _, title, how = _FAMILIES[fam]
                body.append(f'<tr class="fam"><th colspan="{3 + len(self.cands)}">{_e(title)}'
                            f'<span class="muted"> — {_e(how)}</span></th></tr>')
            last_family = fam
            cells = []
            for c in self.cands:
                m = self.m(c, n)
                if not m:
                    cells.append('<td class="num muted">not computed</td>')
                    continue
                rk = self.rank(c, n)
                best = rk is not None and rk[0] == 1 and not rk[1]
                n_txt = f"n={m.get('n', '?')}" + (f", {m['n_empty']} empty maps" if m.get("n_empty") else "")
                cells.append(
                    f'<td class="num{" best" if best else ""}" title="{_e(n_txt)}"><b>{fmt(m.get("value"))}</b>'
                    f'<div class="ci">{_ci_text(m.get("ci"))}</div></td>'
                )
            variant = self.variants.get(n, "")
            vtag = f'<span class="tag {_e(variant)}">{_e(variant)}</span>' if variant else ""
            body.append(
                f'<tr><th scope="row">{_e(n)} {vtag}<div class="note">{_e(_MEASURE_NOTES.get(n, ""))}</div></th>'
                f'<td>{self.arrow(n)}</td>{"".join(cells)}<td class="plot">{self.forest(n)}</td></tr>'
            )
        return (
            '<section id="measures"><h2>All measures</h2><p class="lead">Each value is the mean over images '
            "(and training runs) with its 95% bootstrap confidence interval below it; the bars on the right put "
            "the candidates' intervals on one axis. Bold green: ranked first, not tied with everyone.</p>"
            '<div class="scroll"><table class="measures"><thead><tr><th>measure</th><th>better</th>'
            f'{head}<th>95% CIs</th></tr></thead><tbody>{"".join(body)}</tbody></table></div></section>'
        )

    def overlay_section(self) -> str:
        per = self.overlays.get("overlays") or {}
        images = self.overlays.get("images") or []
        if not per or not images:
            return ""
        cands = [c for c in self.cands if c in per]
        # One row per candidate, one column per image: the same image sits in the same column for everyone.
        cells = ['<div class="ov-corner"></div>']
        for img in images:
            key = str(img.get("key", ""))
            short = key.rsplit("/", 1)[-1]
            cells.append(f'<div class="ov-head" title="{_e(key)}"><b>{_e(short)}</b>'
                         f'<span>label {_e(img.get("label", "?"))}</span></div>')
        for c in cands:
            cells.append(f'<div class="ov-cand">{self.chip(c)}</div>')
            for img in images:
                nn = img.get("nn")
                short = str(img.get("key", "")).rsplit("/", 1)[-1]
                entry = next((o for o in per[c] if o.get("nn") == nn), None)
                data = self.images.get(entry["name"]) if entry else None
                if not entry or not data:
                    cells.append('<div class="ov-cell missing">no overlay</div>')
                    continue
                preds = [str(p) for p in entry.get("predicted", [])]
                top = max(sorted(set(preds)), key=preds.count) if preds else "?"
                votes = f" {preds.count(top)}/{len(preds)}" if len(preds) > 1 else ""
                wrong = ' class="wrong"' if preds and top != str(img.get("label")) else ""
                uri = "data:image/png;base64," + base64.b64encode(data).decode()
                cells.append(
                    f'<figure class="ov-cell"><img src="{uri}" alt="{_e(c)} salience on {_e(short)}" '
                    f'width="122" height="122" title="{_e(c)} on {_e(short)}">'
                    f"<figcaption><span{wrong}>{_e(top)}</span>{votes} · {fmt(entry.get('target_score_mean'))}"
                    "</figcaption></figure>"
                )
        cols = f"max-content repeat({len(images)}, 130px)"
        note = _e(self.overlays.get("note", ""))
        method = _e(self.overlays.get("method", ""))
        return (
            '<section id="overlays"><h2>Salience overlays</h2><p class="lead">The same images for every candidate '
            f"(columns), evenly spread over the evaluated set: {method} maps, {note}. Under each image: the class "
            "the runs predict (red when it is not the label), how many runs agree, and the mean score of the "
            "explained class.</p>"
            '<div class="legend"><span>low</span><span class="ramp"></span><span>high salience</span></div>'
            f'<div class="scroll"><div class="ov-grid" style="grid-template-columns:{cols}">{"".join(cells)}'
            "</div></div></section>"
        )

    def _curve_measures(self) -> list[str]:
        return [n for n in self.measures
                if any(((self.m(c, n).get("details") or {}).get("curves")) for c in self.cands)]

    def line_chart(self, series: list[tuple[str, list[tuple[float, float, float | None, float | None]]]],
                   title: str, xlabel: str, ylabel: str = "") -> str:
        """One inline SVG chart: a line (and CI band) per candidate."""
        xs = [p[0] for _, pts in series for p in pts]
        ys = [v for _, pts in series for p in pts for v in (p[1], p[2], p[3]) if _finite(v)]
        if not xs or not ys:
            return ""
        w, h, ml, mr, mt, mb = 340, 220, 60 if ylabel else 48, 12, 28, 40
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-9:
            y0, y1 = y0 - 0.5, y1 + 0.5
        pad = (y1 - y0) * 0.06
        y0, y1 = y0 - pad, y1 + pad
        if x1 == x0:
            x1 = x0 + 1

        def px(v: float) -> float:
            return ml + (w - ml - mr) * (v - x0) / (x1 - x0)

        def py(v: float) -> float:
            return mt + (h - mt - mb) * (1 - (v - y0) / (y1 - y0))

        out = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
               f'aria-label="{_e(title)}"><text x="{ml}" y="16" class="ct">{_e(title)}</text>']
        yt = _nice_ticks(y0, y1, 5)
        ystep = yt[1] - yt[0] if len(yt) > 1 else 1
        for t in yt:
            out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                       f'<text x="{ml - 6}" y="{py(t) + 3.5:.1f}" class="tick" text-anchor="end">'
                       f"{_tick_label(t, ystep)}</text>")
        xt = _nice_ticks(x0, x1, 6)
        xstep = xt[1] - xt[0] if len(xt) > 1 else 1
        for t in xt:
            out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{h - mb}" y2="{h - mb + 4}" class="axis"/>'
                       f'<text x="{px(t):.1f}" y="{h - mb + 16}" class="tick" text-anchor="middle">'
                       f"{_tick_label(t, xstep)}</text>")
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{h - mb}" y2="{h - mb}" class="axis"/>'
                   f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{h - mb}" class="axis"/>'
                   f'<text x="{(ml + w - mr) / 2:.1f}" y="{h - 6}" class="xl" text-anchor="middle">{_e(xlabel)}</text>')
        if ylabel:
            cy = (mt + h - mb) / 2
            out.append(f'<text x="12" y="{cy:.1f}" class="xl" text-anchor="middle" '
                       f'transform="rotate(-90 12 {cy:.1f})">{_e(ylabel)}</text>')
        for cand, pts in series:
            col = self.color[cand]
            band = [(p[0], p[2], p[3]) for p in pts if _finite(p[2]) and _finite(p[3])]
            if len(band) >= 2:
                upper = " ".join(f"{px(a):.1f},{py(hi):.1f}" for a, _, hi in band)
                lower = " ".join(f"{px(a):.1f},{py(lo):.1f}" for a, lo, _ in reversed(band))
                out.append(f'<polygon points="{upper} {lower}" fill="{col}" fill-opacity="0.14" stroke="none"/>')
            line = [p for p in pts if _finite(p[1])]
            if line:
                d = " ".join(f"{px(a):.1f},{py(v):.1f}" for a, v, _, _ in line)
                out.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="2.2" '
                           'stroke-linejoin="round"/>')
                for a, v, lo, hi in line:
                    out.append(f'<circle cx="{px(a):.1f}" cy="{py(v):.1f}" r="2.6" fill="{col}"><title>'
                               f"{_e(cand)}: {fmt(v)} at {fmt(a)} (95% CI {fmt(lo)} … {fmt(hi)})</title></circle>")
        out.append("</svg>")
        return "".join(out)

    def curves_section(self) -> str:
        names = self._curve_measures()
        if not names:
            return ""
        blocks = []
        for n in names:
            xkey, xlabel = _CURVE_AXES.get(n, ("", "level"))
            kinds: list[str] = []
            for c in self.cands:
                for k in ((self.m(c, n).get("details") or {}).get("curves") or {}):
                    if k not in kinds:
                        kinds.append(k)
            charts = []
            for k in kinds:
                series = []
                for c in self.cands:
                    pts_raw = ((self.m(c, n).get("details") or {}).get("curves") or {}).get(k) or []
                    pts = []
                    for p in pts_raw:
                        xv = p.get(xkey) if xkey else next((p[a] for a in ("amount", "k", "level") if a in p), None)
                        if not _finite(xv):
                            continue
                        ci = p.get("ci") or [None, None]
                        pts.append((float(xv), p.get("value"), ci[0], ci[1]))
                    if pts:
                        series.append((c, pts))
                ylabel = "target-class score" if n.startswith("degradation.") else ""
                chart = self.line_chart(series, _CURVE_TITLES.get(k, k), xlabel, ylabel)
                if chart:
                    charts.append(f'<div class="card chart-card">{chart}</div>')
            legend = "".join(self.chip(c) for c in self.cands)
            fam = _family_of(n)
            how = _FAMILIES[fam][2] if fam < len(_FAMILIES) else ""
            blocks.append(f'<h3>{_e(n)} <span class="muted">— {_e(how)}</span></h3>'
                          f'<div class="legend-chips">{legend}<span class="muted">shaded: 95% CI</span></div>'
                          f'<div class="charts">{"".join(charts)}</div>')
        return ('<section id="curves"><h2>Curves</h2><p class="lead">The curves behind the area-based measures, '
                "averaged over images and runs.</p>" + "".join(blocks) + "</section>")

    def _stability_measures(self) -> list[str]:
        return [n for n in self.measures if n.startswith("stability.")
                and any((self.m(c, n).get("details") or {}).get("matrix") for c in self.cands)]

    @staticmethod
    def _heat(v: float) -> str:
        """Diverging colour for a similarity in [-1, 1]: red below 0, white at 0, blue towards 1."""
        t = max(-1.0, min(1.0, v))
        if t >= 0:
            a, b = (247, 247, 247), (33, 102, 172)
        else:
            a, b, t = (247, 247, 247), (178, 24, 43), -t
        r, g, bl = (round(a[i] + (b[i] - a[i]) * t) for i in range(3))
        return f"rgb({r},{g},{bl})"

    def heatmap(self, cand: str, name: str) -> str:
        det = self.m(cand, name).get("details") or {}
        mat = det.get("matrix") or []
        k = len(mat)
        if k == 0:
            return ""
        cell, lab = 46 if k <= 6 else 40 if k <= 8 else 26, 46
        w = lab + cell * k + 4
        h = lab + cell * k + 4
        out = [f'<svg class="heat" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
               f'aria-label="{_e(cand)} {_e(name)} matrix">']
        for i in range(k):
            out.append(f'<text x="{lab - 6}" y="{lab + i * cell + cell / 2 + 4:.1f}" class="tick" '
                       f'text-anchor="end">run {i}</text>')
            out.append(f'<text x="{lab + i * cell + cell / 2:.1f}" y="{lab - 8}" class="tick" '
                       f'text-anchor="middle">{i}</text>')
            for j in range(k):
                v = mat[i][j]
                x, y = lab + j * cell, lab + i * cell
                if i == j:
                    out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="#eceff3"/>')
                    continue
                fill = self._heat(float(v)) if _finite(v) else "#ddd"
                dark = _finite(v) and abs(float(v)) > 0.55
                out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                           f"<title>run {i} vs run {j}: {fmt(v)}</title></rect>")
                if cell >= 40:
                    txt = f"{float(v):.2f}" if _finite(v) else "n/a"
                    out.append(f'<text x="{x + cell / 2 - 0.5:.1f}" y="{y + cell / 2 + 4:.1f}" class="cellv" '
                               f'text-anchor="middle" fill="{"#fff" if dark else "#1d2330"}">{txt}</text>')
        out.append("</svg>")
        outlier = det.get("outlier_run")
        m = self.m(cand, name)
        caption = (f"{self.chip(cand)} mean off-diagonal <b>{fmt(m.get('value'))}</b>"
                   + (f' · least typical run: <b>run {_e(outlier)}</b>' if outlier is not None and k > 2 else ""))
        return (f'<figure class="card heat-card" style="width:{max(w, 240) + 34}px">{"".join(out)}'
                f"<figcaption>{caption}</figcaption></figure>")

    def stability_section(self) -> str:
        names = self._stability_measures()
        if not names:
            return ""
        blocks = []
        for n in names:
            maps = "".join(self.heatmap(c, n) for c in self.cands)
            blocks.append(f'<h3>{_e(n)} <span class="muted">— {_e(_MEASURE_NOTES.get(n, ""))}</span></h3>'
                          f'<div class="heats">{maps}</div>')
        scale = ('<div class="legend"><span>−1</span><span class="ramp div"></span><span>+1 (identical '
                 "maps)</span></div>")
        return ('<section id="stability"><h2>Stability across training runs</h2><p class="lead">How similar the '
                "salience maps of each pair of training runs are, averaged over images. A stable recipe gives a "
                "uniformly blue matrix; one pale row points at a run that learned something else.</p>"
                + scale + "".join(blocks) + "</section>")

    def provenance(self) -> str:
        p = self.r.get("provenance") or {}
        cfg = self.r.get("config") or {}
        ds = self.r.get("dataset") or {}
        rows = [
            ("schema", f"{_e(self.r.get('schema_version', '?'))}"),
            ("measures version", _e(p.get("measures_version", "?"))),
            ("device", f"{_e(p.get('device', '?'))}" + (" (CUDA available)" if p.get("cuda") else "")),
            ("python", _e(p.get("python", "?"))),
            ("platform", _e(p.get("platform", "?"))),
            ("seed", _e(p.get("seed", cfg.get("seed", "?")))),
            ("dataset sha256", f'<code title="{_e(p.get("dataset_sha256", ""))}">'
                               f'{_e(str(p.get("dataset_sha256", ""))[:16])}…</code>'),
        ]
        if p.get("ood_dataset_sha256"):
            rows.append(("out-of-set sha256", f'<code>{_e(str(p["ood_dataset_sha256"])[:16])}…</code>'))
        counts = ds.get("counts") or {}
        if counts:
            rows.append(("images per class", ", ".join(f"{_e(k)}: {_e(v)}" for k, v in counts.items())))
        if ds.get("n_skipped"):
            rows.append(("skipped files", f"{_e(ds['n_skipped'])} (unreadable; listed in the JSON report)"))
        timing = (p.get("timing") or {}).get("seconds") or {}
        if timing:
            rows.append(("seconds", ", ".join(f"{_e(k)} {fmt(v)}" for k, v in timing.items())))
        libs = p.get("libraries") or {}
        if libs:
            rows.append(("libraries", ", ".join(f"{_e(k)} {_e(v)}" for k, v in libs.items())))
        table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        cfg_models = {c["name"]: c.get("models", []) for c in cfg.get("candidates", [])}
        model_rows = []
        shas = p.get("model_sha256") or {}
        for c in self.cands:
            ids = cfg_models.get(c, [])
            for i, sha in enumerate(shas.get(c, [])):
                ident = ids[i] if i < len(ids) else ""
                model_rows.append(f"<tr><td>{self.chip(c) if i == 0 else ''}</td><td>run {i}</td>"
                                  f"<td><code>{_e(ident)}</code></td><td><code title=\"{_e(sha)}\">{_e(sha[:12])}…"
                                  "</code></td></tr>")
        config_json = _e(json.dumps(cfg, indent=2, sort_keys=True))
        return (
            '<section id="provenance"><h2>Provenance</h2><p class="lead">What produced these numbers. The same '
            "models, data and configuration give the same report (apart from timing).</p>"
            f'<div class="two"><div class="card"><table class="kvt">{table}</table></div>'
            '<div class="card"><table class="kvt models"><thead><tr><th>candidate</th><th>run</th><th>model</th>'
            f'<th>sha256</th></tr></thead><tbody>{"".join(model_rows)}</tbody></table></div></div>'
            f"<details><summary>Configuration (JSON)</summary><pre>{config_json}</pre></details></section>"
        )

    def render(self) -> str:
        body = "".join([
            self.header(),
            self.nav(),
            '<main class="wrap">',
            self.warnings_section(),
            self.summary(),
            self.ranking(),
            self.measures_table(),
            self.overlay_section(),
            self.curves_section(),
            self.stability_section(),
            self.provenance(),
            "</main>",
            '<footer class="wrap">Generated by Explain-to-Me from report schema '
            f"{_e(self.r.get('schema_version', '?'))}. Self-contained: this page loads nothing from the network."
            "</footer>",
        ])
        return (
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<link rel="icon" href="data:,">'
            f"<title>{_e(self.title)}{' — ' + _e(self.job['id']) if self.job.get('id') else ''}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>"
        )


def render_report_html(
    report: Mapping[str, Any],
    *,
    overlays: Mapping[str, Any] | None = None,
    images: Mapping[str, bytes] | None = None,
    job: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """Render a report as one self-contained HTML page.

    Args:
        report: The report dict (``EvaluationResult.report``, or ``GET /v1/jobs/{id}/report``).
        overlays: The job's ``overlays.json`` artifact (which image each overlay shows); None: no overlays.
        images: Artifact name -> PNG bytes for the overlays it names (others are ignored).
        job: The job as the API serves it (``id``, ``finished_at``, ``cache_hit``), for the header.
        title: The page title (default "Explain-to-Me evaluation report").

    Returns:
        The HTML page as a string (UTF-8 when encoded); it references nothing outside itself.
    """
    return _Page(report, overlays, images, job, title).render()


_CSS = """
:root{--bg:#f5f6f8;--card:#fff;--line:#e2e5ea;--ink:#1d2330;--muted:#5d6778;--accent:#2b59c3;
--good:#11703a;--goodbg:#e5f5eb;font-size:15px}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font-family:system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;line-height:1.45}
.wrap{max-width:1240px;margin:0 auto;padding:0 24px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.86em;background:#eef1f5;
padding:1px 5px;border-radius:4px}
.hero{background:linear-gradient(135deg,#1f2a44 0%,#2b59c3 100%);color:#fff;padding:28px 0 22px}
.hero .brand{font-size:.8rem;letter-spacing:.14em;text-transform:uppercase;opacity:.8}
.hero h1{margin:4px 0 8px;font-size:1.9rem;font-weight:650}
.hero .meta{margin:0 0 14px;opacity:.92}
.hero code{background:rgba(255,255,255,.16);color:#fff}
.chips{display:flex;gap:10px;flex-wrap:wrap}
.chip{display:inline-flex;align-items:center;gap:6px;font-weight:600;white-space:nowrap}
.chip i{display:inline-block;width:11px;height:11px;border-radius:50%;flex:none}
.chip.big{background:rgba(255,255,255,.95);color:var(--ink);padding:5px 12px;border-radius:999px}
.chip.big small{font-weight:400;color:var(--muted);margin-left:2px}
.toc{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line);
backdrop-filter:blur(4px)}
.toc .wrap{display:flex;gap:22px;overflow-x:auto;padding-top:10px;padding-bottom:10px}
.toc a{color:var(--muted);text-decoration:none;font-weight:550;white-space:nowrap}
.toc a:hover{color:var(--accent)}
section{margin:30px 0 10px}
h2{font-size:1.35rem;margin:0 0 6px}
h3{font-size:1.05rem;margin:22px 0 8px}
.lead{color:var(--muted);margin:0 0 14px;max-width:900px}
.muted{color:var(--muted);font-weight:400}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;
box-shadow:0 1px 2px rgba(20,30,50,.04)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
.cand{border-top:4px solid}
.cand-name{display:flex;justify-content:space-between;align-items:center;font-size:1.08rem;margin-bottom:8px}
.kv{display:flex;justify-content:space-between;border-top:1px dashed var(--line);padding:5px 0}
.kv span{color:var(--muted)}
.badge{font-size:.72rem;font-weight:650;text-transform:uppercase;letter-spacing:.05em;padding:2px 8px;
border-radius:999px;background:#eef0f3;color:var(--muted)}
.badge.good{background:var(--goodbg);color:var(--good)}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%}
th,td{padding:8px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
thead th{font-size:.78rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);background:#fafbfc}
tbody tr:last-child th,tbody tr:last-child td{border-bottom:none}
th[scope=row]{font-weight:600;white-space:nowrap}
.warnings h2{color:#9a5200}
.warnings .scroll{border-color:#f0c88a;background:#fffaf2}
.fix{margin-top:4px;font-size:.9rem}
.note{font-weight:400;font-size:.8rem;color:var(--muted);white-space:normal;max-width:260px}
.dir{font-size:.8rem;color:var(--muted);white-space:nowrap}
.ranks{display:flex;flex-wrap:wrap;gap:8px}
table.rank td:nth-child(3){min-width:450px}
table.rank td:nth-child(4){font-size:.9rem}
.rk{display:inline-flex;align-items:center;gap:7px;border:1px solid var(--line);border-radius:8px;padding:3px 9px;
background:#fafbfc}
.rk b{font-variant-numeric:tabular-nums}
.rk em{font-style:normal;color:var(--muted);margin-left:1px}
.rk .v{font-variant-numeric:tabular-nums;color:var(--muted)}
.rk.r1{background:var(--goodbg);border-color:#b9e3c8}
.rk.r1>b{color:var(--good)}
.measures td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.measures td.num b{font-weight:600}
.measures td.best b{color:var(--good)}
.measures td.best{background:#f3fbf6}
.ci{font-size:.78rem;color:var(--muted)}
tr.fam th{background:#f1f4f9;font-size:.9rem;color:var(--ink);padding-top:10px}
.tag{font-size:.68rem;font-weight:600;padding:1px 6px;border-radius:4px;background:#eef0f3;color:var(--muted);
vertical-align:middle}
.tag.default{background:#e8eefc;color:var(--accent)}
.tag.paper{background:#fdf1e4;color:#9a5200}
td.plot{min-width:210px}
svg .zero{stroke:#9aa3b2;stroke-dasharray:3 3}
.legend{display:flex;align-items:center;gap:10px;color:var(--muted);font-size:.85rem;margin:0 0 12px}
.ramp{display:inline-block;width:180px;height:10px;border-radius:5px;
background:linear-gradient(90deg,#00007f,#0000ff,#0080ff,#00ffff,#80ff80,#ffff00,#ff8000,#ff0000,#7f0000)}
.ramp.div{background:linear-gradient(90deg,rgb(178,24,43),rgb(247,247,247),rgb(33,102,172))}
.ov-grid{display:grid;gap:0;width:max-content;padding:4px 6px 8px}
.ov-corner,.ov-head{border-bottom:1px solid var(--line)}
.ov-head{display:flex;flex-direction:column;font-size:.76rem;padding:8px 4px;overflow:hidden}
.ov-head b{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:122px}
.ov-head span{color:var(--muted)}
.ov-cand{display:flex;align-items:center;padding:0 14px 0 6px;border-bottom:1px solid var(--line)}
.ov-cell{margin:0;padding:8px 4px;border-bottom:1px solid var(--line)}
.ov-cell img{display:block;width:122px;height:122px;border-radius:6px;image-rendering:pixelated;
box-shadow:0 0 0 1px var(--line)}
.ov-cell figcaption{font-size:.74rem;margin-top:4px;color:var(--muted);max-width:124px}
.ov-cell figcaption span{color:var(--ink);font-weight:600}
.ov-cell figcaption span.wrong{color:#b3261e}
.ov-cell.missing{color:var(--muted);font-size:.8rem;display:flex;align-items:center}
.legend-chips{display:flex;gap:14px;flex-wrap:wrap;align-items:center;margin:0 0 10px;font-size:.9rem}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:14px}
.chart-card{padding:8px 10px}
svg.chart{display:block;width:100%;height:auto;max-width:520px}
svg .grid{stroke:#edf0f4}
svg .axis{stroke:#9aa3b2}
svg .tick{font-size:10.5px;fill:var(--muted)}
svg .xl{font-size:11px;fill:var(--muted)}
svg .ct{font-size:12.5px;font-weight:600;fill:var(--ink)}
svg .cellv{font-size:10.5px;font-variant-numeric:tabular-nums}
.heats{display:flex;flex-wrap:wrap;gap:14px}
.heat-card{margin:0}
.heat-card figcaption{font-size:.85rem;margin-top:6px}
.two{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:14px}
.kvt th{width:170px;color:var(--muted);font-weight:500;font-size:.88rem;vertical-align:top}
.kvt td{font-size:.9rem;word-break:break-word}
.kvt.models th{width:auto}
.kvt.models td{white-space:nowrap}
.kvt.models td:nth-child(3){white-space:normal;word-break:break-all}
details{margin-top:14px}
summary{cursor:pointer;color:var(--accent);font-weight:550}
pre{background:#0f1626;color:#dce3f0;padding:14px;border-radius:8px;overflow:auto;font-size:.8rem;max-height:420px}
footer{color:var(--muted);font-size:.82rem;padding-top:14px;padding-bottom:36px;border-top:1px solid var(--line);
margin-top:34px}
@media (max-width:900px){.two{grid-template-columns:1fr}.hero h1{font-size:1.5rem}}
@media print{.toc{display:none}.card,.scroll{box-shadow:none}body{background:#fff}}
"""
