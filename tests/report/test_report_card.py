"""Report additions: training series panels, alignment curves (absent keys tolerated), scaling-law
section, model card (provenance, probes, energy from manifest CPU time), runs with missing stages,
``lmforge report RUN``, and report.html in headless Chromium with no broken image."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from test_report import _jsonl, _stage, build_full_run

from lmforge.report import render_report
from lmforge.report.sections import CardOptions


def _scaling_run(run: Path) -> None:
    from lmforge.scaling.analysis import analyse
    from lmforge.scaling.laws import ChinchillaLaw

    law = ChinchillaLaw(E=2.0, A=300.0, alpha=0.4, B=300.0, beta=0.3)
    points = [
        {
            "size": f"{i}",
            "n_params": n,
            "tokens": d,
            "flops": 6 * n * d,
            "val_loss": float(law.loss(n, d)),
            "val_bpb": 1.0,
        }
        for i, n in enumerate((1e4, 4e4, 1.6e5))
        for d in (1e5, 4e5, 1.6e6)
    ]
    fit = _stage(run, "fit", "scaling.fit", "2026-11-21T23:10:00Z", 4.0, metrics={"alpha": 0.4, "beta": 0.3})
    result = analyse(points, delta=1e-3, starts=4, bootstrap=5, seed=0, level=0.95)
    (fit / "fit.json").write_text(json.dumps(result))
    pred = _stage(
        run,
        "predict",
        "scaling.predict",
        "2026-11-21T23:11:00Z",
        9.0,
        metrics={"prediction_error": 0.01},
        cpu_s=8.5,
    )
    (pred / "prediction.json").write_text(
        json.dumps(
            {
                "size": "4x64",
                "n_params": 6.4e5,
                "tokens": 1.6e6,
                "predicted_loss": 2.3,
                "interval": [2.2, 2.4],
                "measured_loss": 2.32,
                "prediction_error": 0.0086,
            }
        )
    )


def _align_run(run: Path) -> None:
    dpo = _stage(run, "dpo", "align.dpo", "2026-11-21T23:07:00Z", 3.0)
    _jsonl(
        dpo / "metrics.jsonl",
        [{"step": s, "reward_accuracy": 0.5 + s / 40, "reward_margin": s / 10} for s in range(1, 11)]
        + [{"step": s, "loss": 0.69 - s / 100, "lr": 1e-5} for s in range(1, 11)],
    )
    grpo = _stage(run, "grpo", "align.grpo", "2026-11-21T23:08:00Z", 3.0)
    _jsonl(
        grpo / "metrics.jsonl",
        [{"step": s, "reward": s / 10} | ({"kl": s / 100} if s > 3 else {}) for s in range(1, 9)],
    )
    _stage(run, "ppo", "align.ppo", "2026-11-21T23:09:00Z", 3.0)  # no metrics.jsonl at all


def _rich_run(root: Path) -> Path:
    run = build_full_run(root)
    pre = run / "pretrain"
    rows = [
        {
            "step": s,
            "loss": 5.0 - s / 100,
            "lr": 1e-3 * min(1, s / 50),
            "grad_norm": 1.0 + 1 / (s + 1),
            "tokens_per_s": 900.0 + s,
        }
        for s in range(0, 300, 10)
    ]
    _jsonl(pre / "metrics.jsonl", rows + [{"step": 290, "val_loss": 2.2}])
    manifest = json.loads((pre / "manifest.json").read_text())
    manifest.update(
        cpu_s=3600.0, cpu_children_s=0.0, metrics={"val_loss": 2.2, "params": 1234567, "tokens": 9_000_000}
    )
    (pre / "manifest.json").write_text(json.dumps(manifest))
    ev = json.loads((run / "eval" / "manifest.json").read_text())
    ev["metrics"] |= {"bias_gender_mean_gap": 0.12, "memo_train_exact": 0.03, "memo_val_exact": 0.0}
    ev["cpu_s"] = 36.0
    (run / "eval" / "manifest.json").write_text(json.dumps(ev))
    data = json.loads((run / "data" / "manifest.json").read_text())
    data["config"] = {"input": ["builtin:python-docs"]}
    data["metrics"] |= {"docs_in": 1200, "docs_out": 1000, "pii_email": 4, "dropped_language": 7}
    (run / "data" / "manifest.json").write_text(json.dumps(data))
    _align_run(run)
    _scaling_run(run)
    return run


def test_rich_run_has_alignment_scaling_and_model_card(tmp_path: Path):
    run = _rich_run(tmp_path)
    md_path, html_path = render_report(
        run, card=CardOptions(watts_per_core=20.0, grid_g_per_kwh=500.0, limitations=["Only English."])
    )
    md, page = md_path.read_text(), html_path.read_text()
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert (
        headings.index("Training")
        < headings.index("Alignment")
        < headings.index("Scaling laws")
        < headings.index("Model card")
    )
    assert (run / "report_files" / "align_dpo.png").exists() and (
        run / "report_files" / "align_grpo.png"
    ).exists()
    assert not (run / "report_files" / "align_ppo.png").exists()  # nothing logged: no figure, no error
    alignment = md.split("## Alignment")[1].split("\n## ")[0]
    assert "reward\\_accuracy" in alignment and "| kl | 5 |" in alignment and "### ppo" not in alignment
    scaling = md.split("## Scaling laws")[1].split("\n## ")[0]
    assert "L(N, D) = " in scaling and "Held-out check (predict)" in scaling and "0.86%" in scaling
    assert (run / "report_files" / "scaling_compute_fit.png").exists() and (
        run / "report_files" / "scaling_isoflop_fit.png"
    ).exists()
    card = md.split("## Model card")[1].split("\n## ")[0]
    for text in ("Intended use", "builtin:python-docs", "1,000 of 1,200 documents", "email 4", "Only English.",
                 "bias\\_gender\\_mean\\_gap", "memo\\_train\\_exact", "Energy and carbon estimate"):  # fmt: skip
        assert text in card, text
    # pretrain: 3600 CPU s x 20 W = 20 Wh -> 10 g at 500 g/kWh; eval 36 s -> 0.2 Wh; predict 8.5 s
    assert "| pretrain | 3600 | 20 | 10 | CPU time × 20 W/core |" in card
    assert "| total |  | 20.2 | 10.1 |  |" in card  # (3600 + 36 + 8.5) s x 20 W = 20.25 Wh
    assert "Not measured (manifest has no CPU time): data" in card
    # train series panels: the loss figure is wider with lr, grad norm and tokens/s
    import matplotlib.image

    assert matplotlib.image.imread(run / "report_files" / "loss_pretrain.png").shape[1] == 1000
    assert page.count("data:image/png;base64,") == 6  # the data funnel first


def test_missing_stages_omit_sections_not_errors(tmp_path: Path):
    run = tmp_path / "partial-run"
    _align_run(run)  # align stages only: no data, tokenizer, eval, scaling
    fit = _stage(run, "fit", "scaling.fit", "2026-11-21T23:10:00Z", 1.0)  # a fit without fit.json
    (fit / "fit.json").write_text("{broken")
    md = render_report(run)[0].read_text()
    headings = set(re.findall(r"^## (.+)$", md, flags=re.M))
    assert headings == {"Pipeline", "Alignment", "Model card"}  # no stage recorded metrics: no raw
    card = md.split("## Model card")[1]
    assert "No data stage in this run" in card and "Not run (add probes" in card


def test_report_cli_takes_the_run_directory(tmp_path: Path, capsys):
    from lmforge.cli import main

    run = build_full_run(tmp_path)
    for path in run.glob("*/manifest.json"):  # the run store hashes each input stage's outputs
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        path.write_text(json.dumps({"outputs": {}} | manifest))
    assert main(["report", str(run), "watts_per_core=5", "-q"]) == 0
    manifest = json.loads((run / "report" / "manifest.json").read_text())
    assert manifest["config"]["watts_per_core"] == 5.0 and (run / "report.html").is_file()
    assert main(["report", "--help"]) == 0 and "RUN" in capsys.readouterr().out
    assert main(["report", str(run), "pue=0.5", "-q"]) == 2


def test_report_html_in_chromium_has_no_broken_images(tmp_path: Path, browser_page):
    run = _rich_run(tmp_path)
    html_path = render_report(run)[1]
    page = browser_page
    page.goto(html_path.resolve().as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 6 and all(w > 0 for w in widths), widths
    assert page.locator("h2", has_text="Model card").count() == 1
    shot = tmp_path / "report.png"
    page.set_viewport_size({"width": 1100, "height": 900})
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    out = Path("/tmp") / "lmforge-report-screenshot.png"  # kept for a human look
    out.write_bytes(shot.read_bytes())
    assert np.asarray(matplotlib_imread(shot)).shape[0] > 900


def matplotlib_imread(path: Path):
    import matplotlib.image

    return matplotlib.image.imread(path)
