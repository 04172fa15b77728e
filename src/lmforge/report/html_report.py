"""Render a run as one self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no links out.

The template is kept here as a string (no package data to install). Jinja2 autoescaping is on, so text
from the run (names, prompts, completions) can never inject markup.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import jinja2

from lmforge.report.sections import Section, Table

NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?( %| s| M)?", re.I)  # right-aligned cells

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
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; overflow-wrap: normal; }
  figure { margin: 1em 0; }
  img { max-width: 100%; }
  .sample { white-space: pre-wrap; overflow-wrap: anywhere; border-left: 3px solid #ccc; padding: .4em .8em; margin: .8em 0; background: #fafafa; }
  .bar { background: #4a7bd0; height: .9em; min-width: 2px; }
  .barcell { width: 40%; min-width: 6em; }
  .bars td { white-space: nowrap; overflow-wrap: normal; }
</style>
</head>
<body>
<h1>Run report: {{ name }}</h1>
{% macro table(value) %}
{% if value.title %}<p><strong>{{ value.title }}</strong></p>{% endif %}
{% set headed = value.header|select|list %}
{% if headed %}<table><tr>{% for h in value.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% else %}<table class="glance">{% endif %}
{% for row in value.rows %}<tr>{% for cell in row %}<td{% if headed and cell is numeric_text %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endmacro %}
{% for section in sections %}
<h2>{{ section.title }}</h2>
{% for kind, value in section.blocks %}
{% if kind == "h3" %}<h3>{{ value }}</h3>
{% elif kind == "p" %}<p>{{ value }}</p>
{% elif kind == "ul" %}<ul>{% for item in value %}<li>{{ item }}</li>{% endfor %}</ul>
{% elif kind == "table" %}{{ table(value) }}
{% elif kind == "details" %}<details><summary>{{ value.title }}</summary>{{ table(value|untitled) }}</details>
{% elif kind == "bars" %}<table class="bars"><tr>{% for h in value.header %}<th{% if loop.last %} class="barcell"{% endif %}>{{ h }}</th>{% endfor %}</tr>
{% for row in value.rows %}<tr>{% for cell in row[:-1] %}<td{% if cell is numeric_text %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}
<td class="barcell">{% if row[-1] is not none %}<div class="bar" style="width: {{ '%.1f' % (100 * row[-1]) }}%"></div>{% endif %}</td></tr>
{% endfor %}</table>
{% elif kind == "sample" %}<div class="sample"><strong>{{ value[0] }}</strong>{{ value[1] }}</div>
{% elif kind == "img" %}<figure><img alt="{{ value.alt_text }}" src="data:image/png;base64,{{ value.png|b64 }}">
{% if value.caption %}<figcaption>{{ value.caption }}</figcaption>{% endif %}</figure>
{% endif %}
{% endfor %}
{% endfor %}
</body>
</html>
"""

_ENV = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
)
_ENV.filters["b64"] = lambda png: base64.b64encode(png).decode("ascii")
_ENV.filters["untitled"] = lambda table: Table("", table.header, table.rows)
_ENV.tests["numeric_text"] = lambda cell: bool(NUMBER.fullmatch(str(cell)))


def to_html(name: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML document: a title, then each section (``layout.report_sections``)."""
    return _ENV.from_string(TEMPLATE).render(name=name, sections=list(sections))
