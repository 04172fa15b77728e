"""Render a run as one self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no links out.

The template is kept here as a string (no package data to install). Jinja2 autoescaping is on, so text
from the run (names, prompts, completions) can never inject markup.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import jinja2

from lmforge.report.collect import RunData
from lmforge.report.figures import Image
from lmforge.report.headline import headline_section
from lmforge.report.sections import Section
from lmforge.report.tables import (
    PIPELINE_HEADER,
    curve_summary,
    metric_rows,
    pipeline_rows,
    table_rows,
    timing_rows,
    tokenizer_tables,
)

TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run report: {{ name }}</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
  h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; overflow-wrap: anywhere; }
  h2 { margin-top: 1.8em; border-bottom: 1px solid #eee; }
  h3 { overflow-wrap: anywhere; }
  /* a wide table scrolls inside itself, never the page (phones: 390 px) */
  table { border-collapse: collapse; margin: .8em 0; display: block; max-width: 100%; overflow-x: auto; }
  th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; }
  td { overflow-wrap: anywhere; }
  .glance td:first-child { font-weight: 600; }
  details { margin: .8em 0; }
  summary { cursor: pointer; color: #555; }
  p, li, figcaption { overflow-wrap: anywhere; }
  th { background: #f5f5f5; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  img { max-width: 100%; }
  .sample { white-space: pre-wrap; overflow-wrap: anywhere; border-left: 3px solid #ccc; padding: .4em .8em; margin: .8em 0; background: #fafafa; }
  .bar { background: #4a7bd0; height: .9em; min-width: 2px; }
  .barcell { width: 60%; }
</style>
</head>
<body>
<h1>Run report: {{ name }}</h1>
{% if glance %}
<h2>{{ glance.title }}</h2>
{% for kind, value in glance.blocks %}<table class="glance">
{% for row in value.rows %}<tr><td>{{ row[0] }}</td><td>{{ row[1] }}</td></tr>
{% endfor %}</table>{% endfor %}
{% endif %}
{% macro metrics_table(rows, key="metric", value="value") %}
<table><tr><th>{{ key }}</th><th>{{ value }}</th></tr>
{% for k, v in rows %}<tr><td>{{ k }}</td><td class="num">{{ v }}</td></tr>
{% endfor %}</table>
{% endmacro %}
{% macro block_section(section) %}
<h2>{{ section.title }}</h2>
{% for kind, value in section.blocks %}
{% if kind == "h3" %}<h3>{{ value }}</h3>
{% elif kind == "p" %}<p>{{ value }}</p>
{% elif kind == "ul" %}<ul>{% for item in value %}<li>{{ item }}</li>{% endfor %}</ul>
{% elif kind == "table" %}{% if value.title %}<p><strong>{{ value.title }}</strong></p>{% endif %}
<table><tr>{% for h in value.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in value.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% elif kind == "img" %}<figure><img alt="{{ value.caption or value.instance }}" src="data:image/png;base64,{{ b64(value.png) }}">
{% if value.caption %}<figcaption>{{ value.caption }}</figcaption>{% endif %}</figure>
{% endif %}
{% endfor %}
{% endmacro %}
{% if pipeline %}
<h2>Pipeline</h2>
<table><tr>{% for h in pipeline_header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in pipeline %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endif %}
{% if data %}
<h2>Data</h2>
{% if data.counts %}<h3>Counts</h3>{{ metrics_table(data.counts, "count") }}{% endif %}
{% if data.drops %}<h3>Drops by reason</h3>{{ metrics_table(data.drops, "reason", "dropped") }}{% endif %}
{% if data.metrics %}<details><summary>every data metric ({{ data.metrics|length }})</summary>{{ metrics_table(data.metrics) }}</details>{% endif %}
{% endif %}
{% if tokenizer %}
<h2>Tokenizer</h2>
{% for instance, rows, comparison in tokenizer %}<h3>{{ instance }}</h3>{{ metrics_table(rows) }}
{% if comparison %}<p><strong>Tokenizer kinds compared</strong></p>
<table><tr>{% for h in comparison[0] %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in comparison[1] %}<tr>{% for cell in row %}<td{% if not loop.first %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}
{% endfor %}
{% endif %}
{% for section in early %}{{ block_section(section) }}{% endfor %}
{% if figures %}
<h2>Training</h2>
{% for fig in figures %}
<h3>{{ fig.instance }}</h3>
<img alt="training curves of {{ fig.instance }}" src="data:image/png;base64,{{ fig.data }}">
{% if fig.summary %}<p>{{ fig.summary }}</p>{% endif %}
{% endfor %}
{% endif %}
{% if evals %}
<h2>Evaluation</h2>
{% for instance, rows, tables in evals %}<h3>{{ instance }}</h3>
{% for table in tables %}<p><strong>{{ table.title }}</strong></p>
<table><tr>{% for h in table.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
{{ metrics_table(rows) }}{% endfor %}
{% endif %}
{% if finetune %}
<h2>Fine-tuning</h2>
{% for ft in finetune %}
<h3>{{ ft.instance }} ({{ ft.kind }})</h3>
{% for table in ft.tables %}<p><strong>{{ table.title }}</strong></p>
<table><tr>{% for h in table.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
{{ metrics_table(ft.metrics) }}
{% endfor %}
{% endif %}
{% for section in middle %}{{ block_section(section) }}{% endfor %}
{% if samples %}
<h2>Samples</h2>
{% for instance, pairs in samples %}
<h3>{{ instance }}</h3>
{% for prompt, completion in pairs %}<div class="sample"><strong>{{ prompt }}</strong>{{ completion }}</div>
{% endfor %}
{% endfor %}
{% endif %}
{% if card %}{{ block_section(card) }}{% endif %}
{% if timings %}
<h2>Stage timings</h2>
<table><tr><th>instance</th><th>duration (s)</th><th class="barcell"></th></tr>
{% for instance, seconds, fraction in timings %}<tr><td>{{ instance }}</td><td class="num">{{ seconds }}</td>
<td class="barcell"><div class="bar" style="width: {{ '%.1f' % (100 * fraction) }}%"></div></td></tr>
{% endfor %}</table>
{% endif %}
</body>
</html>
"""

_ENV = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
)


def to_html(
    run: RunData,
    images: Sequence[Image],
    middle: Sequence[Section] = (),
    card: Section | None = None,
    early: Sequence[Section] = (),
) -> str:
    """The whole report as one HTML document; sections without data are left out (``early``,
    ``middle`` and ``card``: as for ``to_markdown``)."""
    curves = {curve.instance: curve for curve in run.curves}
    figures = [
        {
            "instance": image.instance,
            "data": base64.b64encode(image.png).decode("ascii"),
            "summary": curve_summary(curves[image.instance]) if image.instance in curves else "",
        }
        for image in images
    ]
    data = None
    if run.data is not None:
        data = {
            "metrics": metric_rows(run.data.metrics),
            "counts": metric_rows(run.data.counts),
            "drops": metric_rows(run.data.drops),
        }
    return _ENV.from_string(TEMPLATE).render(
        name=run.name,
        pipeline_header=PIPELINE_HEADER,
        pipeline=pipeline_rows(run),
        data=data,
        tokenizer=[(instance, *tokenizer_tables(metrics)) for instance, metrics in run.tokenizer],
        glance=headline_section(run),
        figures=figures,
        evals=[
            (
                instance,
                metric_rows(metrics),
                [{**t, "rows": table_rows(t["rows"])} for t in run.eval_tables.get(instance, [])],
            )
            for instance, metrics in run.evals
        ],
        samples=[(s.instance, s.samples) for s in run.samples],
        finetune=[
            {
                "instance": r.instance,
                "kind": r.kind,
                "metrics": metric_rows(r.metrics),
                "tables": [{**t, "rows": table_rows(t["rows"])} for t in r.tables],
            }
            for r in run.finetune
        ],
        timings=timing_rows(run),
        early=list(early),
        middle=list(middle),
        card=card,
        b64=lambda png: base64.b64encode(png).decode("ascii"),
    )
