"""Figure 9: cost of the sanity checks (``sanity.*``) against Quantus 0.6's MPRT and RandomLogit.

Same network, images, Grad-CAM maps and randomisation seed. Ours: the ``.pt2`` program through the service's
runtime (``etm.models.randomization``: a new GraphModule per step that shares every tensor but the re-initialised
ones), ``SanityMeasure.per_image`` on the evaluation's own batch context: the cascade (L maps, eMPRT reuses the
last) and random logit (1 map), L + 1 salience passes per image beyond the shared clean pass. Quantus: the eager
module the program was exported from, ``MPRT`` (top_down; it deep-copies the model and explains the clean model
once more: L + 1 passes with the clean maps given) and ``RandomLogit`` (1 pass), with an ``explain_func`` that
computes the same Grad-CAM. Reported: seconds per image and per pass, passes per image, and the ratio
Quantus / ours per image and per pass (target: > 1, faster than Quantus at equal passes). Checked: the per-layer
MPRT similarities agree with Quantus's (``normalise=False``, see tests/etm/test_quantus_sanity.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import BENCH_DIR, Report, best, have, interleaved, set_threads

TOL = 1e-5


def gradcam_explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
    """Quantus's explain_func: Grad-CAM at the input of the global pool (a forward hook on ``model.pool`` or the
    module's ``features``), bilinear to the input size: [N, 1, H, W]."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    with torch.enable_grad():
        a = model.features(x).detach().requires_grad_(True)
        logits = model.head(a)
        sel = logits.gather(1, torch.as_tensor(np.asarray(targets), dtype=torch.long).view(-1, 1)).sum()
        (g,) = torch.autograd.grad(sel, a)
    cam = torch.relu(torch.einsum("nk,nkhw->nhw", g.mean(dim=(2, 3)), a.detach()))
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False).numpy()


class _Eager(torch.nn.Module):
    """``features`` / ``head`` of a net that normalises its input itself (Quantus gets images in [0, 1])."""

    def __init__(self, net: torch.nn.Module, mean: list[float], std: list[float], head: Any) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features((x - self.mean) / self.std)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self._head(self.net, a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _inputs(quick: bool) -> dict[str, Any]:
    from etm.models.loader import load_model
    from tests.helpers.tiny import TinyNet, export, tiny_dataset

    trained = Path(__file__).resolve().parent.parent / "benchdata" / "models" / "xent" / "run0.pt2"
    faces = Path(__file__).resolve().parent.parent / "var" / "benchmark" / "faces"
    if not quick and trained.exists() and (faces / "test").is_dir():
        from benchdata.net import FaceNet
        from etm.models.pt2_model import load_exported_program

        state = load_exported_program(trained).state_dict
        widths = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in (0, 4, 8, 12))
        net = FaceNet(widths=widths).eval()  # type: ignore[arg-type]
        net.load_state_dict(state)
        model = load_model(trained, threads=1)
        return {"model": model, "net": net, "dataset": faces, "split": "test", "path": trained,
                "what": "trained benchmark CNN xent/run0 (.pt2, 64 px; 9 layers: 4 conv, 4 BatchNorm, linear)",
                "head": lambda n, a: n.head(a)}
    root = BENCH_DIR / "tiny-sanity"
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = root / "tinynet.pt2"
    if not path.exists():
        export(net, path, "pt2", size=32)
    data = root / "data"
    if not data.exists():
        tiny_dataset(data, n_per_class=8, size=32, masks=False)
    return {"model": load_model(path, threads=1), "net": net, "dataset": data, "split": None, "path": path,
            "what": "tests' TinyNet (.pt2, 32 px; 3 layers)", "head": lambda n, a: n.fc(a.mean(dim=(2, 3)))}


def run(n_images: int = 32, reps: int = 3, quick: bool = False) -> Report:
    from etm.datasets import iter_batches, open_dataset
    from etm.evaluation import Family, _context
    from etm.measures.sanity import SanityMeasure
    from etm.spec import EvaluationSpec

    thread_note = set_threads(1)
    inp = _inputs(quick)
    model = inp["model"]
    ds = open_dataset(inp["dataset"], split=inp["split"])
    n = min(n_images, len(ds))
    size = tuple(model.metadata.input_size)
    spec = EvaluationSpec(candidates=[{"name": "c", "models": [str(inp["path"])]}], dataset=str(inp["dataset"]),
                          measures=["sanity"], batch_size=n, bootstrap_resamples=100)
    fam = Family("c", [model], [str(inp["path"])])
    # Images whose clean map is not empty: Quantus's Spearman fails on a constant map (scipy returns a scalar NaN)
    keep = []
    for b in iter_batches(ds, range(len(ds)), 16, size):
        ok = _context(spec, fam, b).clean[0].upsampled.flatten(1).amax(dim=1) > 0
        keep += [b.subset(i, i + 1) for i in range(len(b)) if bool(ok[i])]
        if len(keep) >= n:
            break
    n = min(n, len(keep))
    batch = _stack(keep[:n])
    ctx = _context(spec, fam, batch)
    measure = SanityMeasure({})
    n_layers = len(ctx.layers_fn(0)) if ctx.layers_fn else 0
    eager = _Eager(inp["net"], model.metadata.mean, model.metadata.std, inp["head"]).eval()
    x = batch.images.numpy()
    y = ctx.clean[0].targets.numpy()
    rep = Report("9", f"sanity checks vs Quantus MPRT + RandomLogit ({inp['what']})")
    rep.setup = {"N": n, "size": f"{size[0]}x{size[1]}", "layers": n_layers, "threads": thread_note}

    def ours() -> Any:
        return measure.per_image(ctx)

    fns: dict[str, Any] = {"ours: sanity.* (mprt + emprt + random_logit)": ours}
    cols = ours()
    with torch.no_grad():
        d = float((eager(torch.from_numpy(x)) - ctx.clean[0].logits).abs().max())
    rep.check("eager module = .pt2 program (logits)", d < 1e-4, f"max |diff| = {d:.2e}")
    passes_ours = n_layers + 1
    passes_q = 0
    if have("quantus"):
        import quantus

        a0 = ctx.clean[0].upsampled.numpy()[:, None]
        kw = {"disable_warnings": True, "display_progressbar": False}
        mprt = quantus.MPRT(layer_order="top_down", seed=42, normalise=False, **kw)
        rl = quantus.RandomLogit(num_classes=model.n_classes, seed=42, **kw)

        def q_mprt() -> Any:
            return mprt(model=eager, x_batch=x, y_batch=y, a_batch=a0, explain_func=gradcam_explain, device="cpu",
                        batch_size=n)

        def q_rl() -> Any:
            return rl(model=eager, x_batch=x, y_batch=y, a_batch=a0, explain_func=gradcam_explain, device="cpu",
                      batch_size=n)

        got = q_mprt()
        names = [str(s) for s in cols["layer_names"][0]]
        theirs = [k.removeprefix("net.") for k in list(got)[1:]]  # the wrapper's attribute
        diff = max(float(np.nanmax(np.abs(cols["mprt"][:, 0, i + 1] - np.asarray(got["net." + k]))))
                   if np.isfinite(cols["mprt"][:, 0, i + 1]).any() else 0.0 for i, k in enumerate(names))
        rep.check("MPRT per layer = Quantus MPRT", theirs == names and diff <= TOL,
                  f"layers {names}; max |diff| = {diff:.2e} (tol {TOL})")
        fns["quantus MPRT + RandomLogit"] = lambda: (q_mprt(), q_rl())
        passes_q = (n_layers + 1) + 1
    else:
        rep.skipped.append("quantus not installed (bench extra): MPRT / RandomLogit")
    times = interleaved(fns, reps)
    rep.timings = times
    t_ours = best(times["ours: sanity.* (mprt + emprt + random_logit)"])
    rep.row("ours: seconds per image", t_ours / n, "s")
    rep.row("ours: salience passes per image", passes_ours, "passes", note="beyond the shared clean pass")
    rep.row("ours: seconds per pass", t_ours / n / passes_ours, "s")
    if "quantus MPRT + RandomLogit" in times:
        t_q = best(times["quantus MPRT + RandomLogit"])
        rep.row("quantus MPRT + RandomLogit: seconds per image", t_q / n, "s")
        rep.row("quantus: explanation passes per image", passes_q, "passes", note="clean maps given (a_batch)")
        rep.row("quantus: seconds per pass", t_q / n / passes_q, "s")
        per_image, per_pass = t_q / t_ours, (t_q / passes_q) / (t_ours / passes_ours)
        rep.row("ratio quantus / ours per image", per_image, "x", target="> 1", met=per_image > 1)
        rep.row("ratio quantus / ours per pass", per_pass, "x", target="> 1", met=per_pass > 1)
    return rep


def _stack(parts: list[Any]) -> Any:
    from dataclasses import replace

    first = parts[0]
    return replace(first, indices=[i for p in parts for i in p.indices], keys=[k for p in parts for k in p.keys],
                   images=torch.cat([p.images for p in parts]),
                   labels=[lb for p in parts for lb in p.labels], masks=torch.cat([p.masks for p in parts]),
                   has_mask=torch.cat([p.has_mask for p in parts]))


def main(argv: list[str] | None = None) -> int:
    from bench.run import print_reports

    ap = argparse.ArgumentParser(prog="python -m bench.sanity", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    return print_reports([run(a.n, a.reps, a.quick)])


if __name__ == "__main__":
    raise SystemExit(main())
