"""The report page's context: what each section shows, from the report dict (templates/report.html.j2 lays it out).

First places follow the one rule of ``etm.comparison.holds_first_place``, as ``etm compare`` and the
leaderboard count them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from api.pages import charts
from api.pages.formatting import ci_text, finite, fmt
from etm.comparison import first_places, holds_first_place

# style-src 'unsafe-inline': the stylesheet is inlined (the page opens offline, from a file) and the candidates'
# colours are style attributes; nothing else may load.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

# Okabe-Ito: distinguishable with the common colour-vision deficiencies (yellow left out: unreadable on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")

FAMILIES: tuple[tuple[str, str, str], ...] = (
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
    ("accuracy", "Accuracy", "Classification performance, for context: not ranked (no per-image values to pair)."),
    ("strategies.", "Strategies", "Clusters of similar salience maps per predicted class (SpRAy); the Strategies "
     "section shows them. Not ranked: more or fewer strategies is neither better nor worse."),
)

# Cluster colours of the strategies section (cluster 0 = the largest); distinct from the candidates' chips.
CLUSTER_COLORS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")

CURVE_AXES = {
    "oos.noise": ("amount", "share of pixels replaced by salt-and-pepper noise"),
    "degradation.deletion": ("k", "pixels deleted (%)"),
}


def family_of(name: str) -> int:
    for i, (prefix, _, _) in enumerate(FAMILIES):
        if name.startswith(prefix) or name == prefix.rstrip("."):
            return i
    return len(FAMILIES)


def measure_order(names: Sequence[str], variants: Mapping[str, str]) -> list[str]:
    rank = {"default": 0, "paper": 1, "extra": 2}
    return sorted(names, key=lambda n: (family_of(n), rank.get(variants.get(n, ""), 3), n))


@cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("api.pages", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, undefined=StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["ci_text"] = ci_text
    return env


@cache
def _stylesheet() -> Markup:
    return Markup(files("api.pages").joinpath("static/report.css").read_text(encoding="utf-8"))


class _Context:
    """The report read once; one method per section returns what its template needs."""

    def __init__(self, report: Mapping[str, Any], overlays: Mapping[str, Any] | None,
                 images: Mapping[str, bytes] | None, notes: Mapping[str, str], titles: Mapping[str, str]) -> None:
        self.r = report
        self.overlays = overlays or {}
        self.images = images or {}
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
        self.measures = measure_order(names, variants)
        self.ranked = [n for n in self.measures if n in self.cmp_measures]
        self.notes = notes
        self.titles = titles

    def m(self, cand: str, name: str) -> Mapping[str, Any]:
        return (self.by_name.get(cand, {}).get("measures") or {}).get(name) or {}

    def direction(self, name: str) -> str | None:
        if name in self.cmp_measures:
            return self.cmp_measures[name]["direction"]
        return next((d for c in self.cands if (d := self.m(c, name).get("direction"))), None)

    def first(self, cand: str, name: str) -> bool:
        ranking = (self.cmp_measures.get(name) or {}).get("ranking") or []
        entry = next((e for e in ranking if e["candidate"] == cand), None)
        return entry is not None and entry.get("trusted", True) and holds_first_place(
            entry["rank"], [e["rank"] for e in ranking])

    # -- sections --------------------------------------------------------------------------------
    def nav(self) -> list[tuple[str, str]]:
        items = [("summary", "Summary"), ("ranking", "Ranking"), ("measures", "All measures")]
        if self.r.get("warnings"):
            items.insert(0, ("warnings", f"Warnings ({len(self.r['warnings'])})"))
        if self.overlays.get("overlays") and self.overlays.get("images"):
            items.append(("overlays", "Salience overlays"))
        if self.curve_measures():
            items.append(("curves", "Curves"))
        if self.stability_measures():
            items.append(("stability", "Stability"))
        if self.strategies():
            items.append(("strategies", "Strategies"))
        items.append(("provenance", "Provenance"))
        return items

    def summary(self) -> dict[str, Any]:
        wins = first_places(self.cmp)
        wins = {c: wins.get(c, 0) for c in self.cands}
        best = max(wins.values()) if wins else 0
        pareto = list(self.cmp.get("pareto_set") or [])
        cards = []
        for c in self.cands:
            acc = self.m(c, "accuracy").get("value")
            verdict = self.by_name[c].get("sanity") or {}
            cards.append({"cand": c, "pareto": c in pareto, "runs": self.by_name[c].get("n_runs", "?"),
                          "wins": wins[c], "accuracy": acc if finite(acc) else None,
                          "sanity": verdict.get("passed") if verdict else "unchecked"})
        sanity = self.cmp.get("sanity") or {}
        return {"cards": cards, "n_ranked": len(self.ranked), "best": best, "pareto": pareto,
                "leaders": [c for c, w in wins.items() if w == best and best > 0],
                "untrusted": list(sanity.get("untrusted") or []), "sanity_rule": sanity.get("rule", ""),
                "sanity_ran": bool(sanity)}

    def ranking(self) -> list[dict[str, Any]]:
        rows = []
        for n in self.ranked:
            cm = self.cmp_measures[n]
            entries = cm["ranking"]
            ranks = [e["rank"] for e in entries]
            chips = [{"cand": e["candidate"], "rank": e["rank"], "tied": bool(e.get("tied_with")),
                      "value": e.get("value"), "untrusted": e.get("trusted", True) is False,
                      "first": e.get("trusted", True) and holds_first_place(e["rank"], ranks)} for e in entries]
            pds = cm.get("paired_differences") or []
            diff: dict[str, Any] | None = None
            if len(pds) == 1:
                p = pds[0]
                diff = {"a": p["a"], "b": p["b"], "mean": p.get("mean_diff"), "ci": p.get("ci")}
            elif pds:
                diff = {"significant": sum(1 for p in pds if p.get("better")), "pairs": len(pds)}
            rows.append({"name": n, "chips": chips, "diff": diff})
        return rows

    def measure_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        last_family = None
        for n in self.measures:
            fam = family_of(n)
            if fam != last_family and fam < len(FAMILIES):
                rows.append({"family": FAMILIES[fam][1], "how": FAMILIES[fam][2]})
            last_family = fam
            cells = []
            for c in self.cands:
                m = self.m(c, n)
                if not m:
                    cells.append(None)
                    continue
                n_txt = f"n={m.get('n', '?')}" + (f", {m['n_empty']} empty maps" if m.get("n_empty") else "")
                cells.append({"value": m.get("value"), "ci": m.get("ci"), "best": self.first(c, n), "n": n_txt})
            forest = charts.forest([(c, self.color[c], self.m(c, n).get("value"), self.m(c, n).get("ci"))
                                    for c in self.cands])
            rows.append({"name": n, "variant": self.variants.get(n, ""), "cells": cells, "forest": forest})
        return rows

    def overlay_grid(self) -> dict[str, Any] | None:
        per = self.overlays.get("overlays") or {}
        images = self.overlays.get("images") or []
        if not per or not images:
            return None
        heads = [{"key": str(img.get("key", "")), "short": str(img.get("key", "")).rsplit("/", 1)[-1],
                  "label": img.get("label", "?")} for img in images]
        rows = []
        # One row per candidate, one column per image: the same image sits in the same column for everyone.
        for c in (c for c in self.cands if c in per):
            cells = []
            for img, head in zip(images, heads, strict=True):
                entry = next((o for o in per[c] if o.get("nn") == img.get("nn")), None)
                data = self.images.get(entry["name"]) if entry else None
                if not entry or not data:
                    cells.append(None)
                    continue
                preds = [str(p) for p in entry.get("predicted", [])]
                top = max(sorted(set(preds)), key=preds.count) if preds else "?"
                cells.append({
                    "uri": "data:image/png;base64," + base64.b64encode(data).decode(), "short": head["short"],
                    "top": top, "votes": f" {preds.count(top)}/{len(preds)}" if len(preds) > 1 else "",
                    "wrong": bool(preds) and top != str(img.get("label")), "score": entry.get("target_score_mean"),
                })
            rows.append({"cand": c, "cells": cells})
        return {"heads": heads, "rows": rows, "cols": f"max-content repeat({len(images)}, 130px)",
                "note": self.overlays.get("note", ""), "method": self.overlays.get("method", "")}

    def curve_measures(self) -> list[str]:
        return [n for n in self.measures
                if any(((self.m(c, n).get("details") or {}).get("curves")) for c in self.cands)]

    def curves(self) -> list[dict[str, Any]]:
        titles = self.titles
        blocks = []
        for n in self.curve_measures():
            xkey, xlabel = CURVE_AXES.get(n, ("", "level"))
            kinds: list[str] = []
            for c in self.cands:
                for k in ((self.m(c, n).get("details") or {}).get("curves") or {}):
                    if k not in kinds:
                        kinds.append(k)
            plots = []
            for k in kinds:
                series = []
                for c in self.cands:
                    pts = []
                    for p in ((self.m(c, n).get("details") or {}).get("curves") or {}).get(k) or []:
                        xv = p.get(xkey) if xkey else next((p[a] for a in ("amount", "k", "level") if a in p), None)
                        if not finite(xv):
                            continue
                        ci = p.get("ci") or [None, None]
                        pts.append((float(xv), p.get("value"), ci[0], ci[1]))
                    if pts:
                        series.append((c, self.color[c], pts))
                ylabel = "target-class score" if n.startswith("degradation.") else ""
                chart = charts.line_chart(series, titles.get(k, k), xlabel, ylabel)
                if chart:
                    plots.append(chart)
            fam = family_of(n)
            blocks.append({"name": n, "how": FAMILIES[fam][2] if fam < len(FAMILIES) else "", "charts": plots})
        return blocks

    def stability_measures(self) -> list[str]:
        return [n for n in self.measures if n.startswith("stability.")
                and any((self.m(c, n).get("details") or {}).get("matrix") for c in self.cands)]

    def stability(self) -> list[dict[str, Any]]:
        blocks = []
        for n in self.stability_measures():
            maps = []
            for c in self.cands:
                det = self.m(c, n).get("details") or {}
                heat = charts.heatmap(det.get("matrix") or [])
                if heat:
                    outlier = det.get("outlier_run")
                    maps.append({"cand": c, "heat": heat, "value": self.m(c, n).get("value"),
                                 "outlier": outlier if outlier is not None and len(det["matrix"]) > 2 else None})
            blocks.append({"name": n, "maps": maps})
        return blocks

    def strategies(self) -> list[dict[str, Any]]:
        """Per candidate with a ``strategies.clusters`` result: per predicted class, its clusters for the page."""
        blocks = []
        rendered = self.overlays.get("strategies") or {}
        for c in self.cands:
            m = self.m(c, "strategies.clusters")
            det = m.get("details") or {}
            if not m or not (det.get("classes") or det.get("message")):
                continue
            runs = self.by_name[c].get("runs") or [{}]
            names = ((runs[0].get("metadata") or {}).get("class_names")) or []
            pngs = {(e.get("class"), e.get("cluster"), e.get("rank")): e.get("name") for e in rendered.get(c, [])}
            classes = []
            for key, cd in (det.get("classes") or {}).items():
                label = names[int(key)] if key.isdigit() and int(key) < len(names) else key
                clusters = []
                for cl in cd.get("clusters") or []:
                    reps = []
                    for rank, rep in enumerate(cl.get("representatives") or []):
                        data = self.images.get(pngs.get((key, cl["cluster"], rank)) or "")
                        uri = "data:image/png;base64," + base64.b64encode(data).decode() if data else None
                        short = str(rep["key"]).rsplit("/", 1)[-1]
                        reps.append({"uri": uri, "key": rep["key"], "short": short, "run": rep["run"]})
                    per_run = cl.get("share_per_run") or []
                    clusters.append({
                        "i": cl["cluster"], "color": CLUSTER_COLORS[cl["cluster"] % len(CLUSTER_COLORS)],
                        "size": cl["size"], "share": fmt(cl["share"]), "peak": tuple(cl.get("peak") or ()),
                        "per_run": " / ".join(fmt(v) for v in per_run) if len(per_run) > 1 else "",
                        "heat": charts.map_heat(cl.get("mean_map") or []), "reps": reps,
                    })
                emb = cd.get("embedding") or {}
                scat = None
                if emb.get("x"):
                    cols = [CLUSTER_COLORS[int(k) % len(CLUSTER_COLORS)] for k in emb["cluster"]]
                    tips = [f"{k} (run {r}): cluster {g}" for k, r, g in zip(emb["key"], emb["run"], emb["cluster"],
                                                                            strict=True)]
                    scat = charts.scatter(emb["x"], emb["y"], cols, tips)
                classes.append({
                    "name": label, "n_points": cd.get("n_points", 0), "n_images": cd.get("n_images", 0),
                    "n_clusters": cd.get("n_clusters"), "message": cd.get("message"), "clusters": clusters,
                    "gaps": ", ".join(f"{v:.3f}" for v in cd.get("eigengaps") or []), "scatter": scat,
                    "at_bound": bool(cd.get("at_max_clusters")),
                })
            blocks.append({"cand": c, "classes": classes, "message": det.get("message"),
                           "pooling": "Points: " + str(det.get("pooling", ""))})
        return blocks

    def provenance(self) -> dict[str, Any]:
        p = self.r.get("provenance") or {}
        cfg = self.r.get("config") or {}
        cfg_models = {c["name"]: c.get("models", []) for c in cfg.get("candidates", [])}
        shas = p.get("model_sha256") or {}
        models = []
        for c in self.cands:
            ids = cfg_models.get(c, [])
            for i, sha in enumerate(shas.get(c, [])):
                models.append({"cand": c if i == 0 else None, "run": i, "id": ids[i] if i < len(ids) else "",
                               "sha": sha})
        return {"p": p, "timing": (p.get("timing") or {}).get("seconds") or {}, "models": models,
                "config_json": json.dumps(cfg, indent=2, sort_keys=True)}


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
    # Here, not at the top: etm.measures loads torch, which the API imports in the background after start-up
    # (api.app's warm-up), not when it imports its routers.
    from etm.measures import curve_titles, variant_notes

    ctx = _Context(report, overlays, images, variant_notes(), curve_titles())
    return _environment().get_template("report.html.j2").render(
        r=report, cfg=report.get("config") or {}, ds=report.get("dataset") or {}, job=job or {},
        title=title or "Explain-to-Me evaluation report", csp=CSP, css=_stylesheet(), cands=ctx.cands,
        colors=ctx.color, runs={c: ctx.by_name[c].get("n_runs", "?") for c in ctx.cands}, notes=ctx.notes,
        directions={n: ctx.direction(n) for n in ctx.measures}, nav=ctx.nav(),
        warnings=list(report.get("warnings") or []),
        summary=ctx.summary(), ranking=ctx.ranking(), measure_rows=ctx.measure_rows(), overlays=ctx.overlay_grid(),
        curves=ctx.curves(), stability=ctx.stability(), strategies=ctx.strategies(), provenance=ctx.provenance(),
    )
