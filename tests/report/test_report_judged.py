"""A stage judged by a reward model (rows with ``win_rate``) gets a second alignment figure — score, KL and
win rate over the steps — beside its series panels; a stage without win rates does not."""

from __future__ import annotations

from pathlib import Path

from test_report import _jsonl, _stage

from lmforge.report import render_report
from lmforge.report.figures import JUDGED_CAPTION


def test_judged_stage_gets_score_kl_and_win_rate_figure(tmp_path: Path):
    run = tmp_path / "run"
    ppo = _stage(run, "ppo", "align.ppo", "2026-11-21T23:09:00Z", 3.0)
    evals = [
        {"step": s, "score": 0.1 * s, "base_score": 0.0, "kl": s / 4, "win_rate": 0.5 + s / 50}
        for s in (0, 10, 20)
    ]
    _jsonl(
        ppo / "metrics.jsonl",
        [{"step": s, "reward": s / 20, "rollout_kl": s / 40} for s in range(1, 21)] + evals,
    )
    reward = _stage(run, "reward", "align.reward", "2026-11-21T23:08:00Z", 3.0)
    _jsonl(
        reward / "metrics.jsonl", [{"step": s, "accuracy": 0.5, "reward_margin": 0.1} for s in range(1, 5)]
    )
    md_path, html_path = render_report(run)
    md = md_path.read_text()
    figures = run / "report_files"
    assert (figures / "judged_ppo.png").exists() and (figures / "align_ppo.png").exists()
    assert not (figures / "judged_reward.png").exists() and (figures / "align_reward.png").exists()
    alignment = md.split("## Alignment")[1]
    ppo_part = alignment.split("### ppo")[1].split("### ")[0]
    assert "judged_ppo.png" in ppo_part and JUDGED_CAPTION[:40] in ppo_part
    assert "| win\\_rate | 3 | 0.9 | 20 |" in ppo_part
    assert html_path.read_text().count("data:image/png;base64,") == 3
