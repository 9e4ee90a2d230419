"""The Deployments page as HTML, from modelship.overview.overview(): per target what serves and whether it is
the desired state, the desired state, the quarantined images, the history and the model versions.

Server-rendered (one request, no build step, readable without the script); static/page.js adds the one
action, "deploy this one". Every link to a run is relative to the page (../dags/…), so it works under any
[api] base_url, and the script opens it in the Airflow UI around the page's frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import quote

OUTCOME_CLASS = {"deployed": "ok", "rolled_back": "bad", "failed": "bad", "interrupted": "warn"}


def run_link(run: Mapping[str, str] | None, label: str | None = None) -> str:
    if not run:
        return '<span class="muted">—</span>'
    href = f"../dags/{quote(run['dag_id'], safe='')}/runs/{quote(run['run_id'], safe='')}"
    text = label or f"{run['dag_id']} · {run['run_id']}"
    return f'<a class="run" data-ui-link href="{escape(href)}" title="{escape(run["run_id"])}">{escape(text)}</a>'


def short(value: Any, n: int = 12) -> str:
    text = str(value or "")
    return f'<code title="{escape(text)}">{escape(text[:n]) or "—"}</code>'


def digest(value: Any) -> str:
    text = str(value or "")
    return f'<code title="{escape(text)}">{escape(text[:19]) + "…" if len(text) > 19 else escape(text) or "—"}</code>'


def when(value: Any) -> str:
    text = str(value or "")
    return f'<time datetime="{escape(text)}">{escape(text.replace("T", " ")[:19]) or "—"}</time>'


def badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{escape(text)}</span>'


def table(headers: Iterable[str], rows: list[str], empty: str, cls: str = "") -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def target_card(item: Mapping[str, Any]) -> str:
    status, verdict = item["status"], item.get("desired") or {}
    name = escape(item["name"])
    if not status.get("reachable"):
        return (f'<section class="card target" data-target="{name}"><h2>{name}</h2>'
                f'{badge("cannot be reached", "warn")}<p class="error">{escape(str(status.get("error")))}</p>'
                '<p class="muted">What serves there is unknown; the rest of the page does not depend on it.</p>'
                "</section>")  # fmt: skip
    if not status.get("serving"):
        serving = f'<p>{badge("nothing serving", "bad")}</p>'
    else:
        health = badge(str(status.get("health")), "ok" if status.get("healthy") else "bad")
        rows = [
            ("image", digest(status.get("image_digest"))),
            ("commit", short(status.get("commit"))),
            ("model", escape(str(status.get("model_version") or "—"))),
            ("since", when(status.get("since"))),
            ("deployed by", run_link(item.get("deployed_by"))),
            ("built by", run_link(item.get("ci_run"))),
        ]
        cells = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
        serving = f'<p class="serving">{badge("serving", "ok")} {health}</p><dl>{cells}</dl>'
    state = verdict.get("in_desired_state")
    label, kind = {True: ("desired state", "ok"), False: ("not the desired state", "warn")}.get(state, ("unknown", ""))
    why = escape(str(verdict.get("why") or ""))
    return (f'<section class="card target" data-target="{name}"><h2>{name}</h2>{serving}'
            f'<p class="desired">{badge(label, kind)} <span class="why">{why}</span></p></section>')  # fmt: skip


def desired_card(want: Mapping[str, Any] | None, error: str | None) -> str:
    if want is None:
        why = escape(error or "unknown")
        return f'<section class="card"><h2>Desired state</h2><p class="error">{why}</p></section>'
    rows = [
        ("model", escape(f"{want.get('model_name')} {want.get('model_version') or '—'}")),
        ("commit", short(want.get("commit"))),
        ("image", digest(want.get("image_digest"))),
        ("built by", run_link(want.get("ci_run"))),
    ]
    cells = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    held = f'<p>{badge("quarantined", "bad")} {escape(want["quarantine"])}</p>' if want.get("quarantine") else ""
    return (f'<section class="card desired-state"><h2>Desired state</h2><dl>{cells}</dl>{held}'
            f'<p class="why">{escape(str(want.get("reason") or ""))}</p></section>')  # fmt: skip


def deploy_button(row: Mapping[str, Any]) -> str:
    if not row.get("deployable"):
        return ""
    data = {"image": row["image"], "target": row["target"], "label": f"{row['commit'][:12]} × {row['model_version']}",
            "quarantined": "true" if row.get("quarantined") else "false"}  # fmt: skip
    attrs = " ".join(f'data-{k}="{escape(str(v))}"' for k, v in data.items())
    return f'<button type="button" class="deploy" {attrs}>Deploy this one</button>'


def history_rows(rows: list[Mapping[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        outcome = badge(r["outcome"].replace("_", " "), OUTCOME_CLASS.get(r["outcome"], ""))
        held = " " + badge("quarantined", "bad") if r.get("quarantined") else ""
        reason = f'<div class="reason">{escape(r["reason"].splitlines()[0][:300])}</div>' if r.get("reason") else ""
        after = r.get("serving_after") or {}
        serves = f"{short(after.get('commit'))} {escape(str(after.get('model_version') or ''))}" if after else "—"
        out.append(
            f'<tr class="record {escape(r["outcome"])}" data-run="{escape(r.get("run_id", ""))}">'
            f"<td>{when(r['ended_at'])}</td><td>{escape(r['target'])}</td><td>{outcome}{held}{reason}</td>"
            f"<td>{digest(r['image_digest'])}</td><td>{short(r['commit'])}</td><td>{escape(r['model_version'])}</td>"
            f"<td>{serves}</td><td>{escape(r.get('approved_by') or '—')}</td>"
            f"<td>{run_link(r.get('run'), 'release')} {run_link(r.get('ci_run'), 'ci')}</td>"
            f"<td>{deploy_button(r)}</td></tr>"
        )
    return out


def quarantine_rows(rows: list[Mapping[str, Any]]) -> list[str]:
    return [
        f'<tr class="quarantine" data-digest="{escape(q["digest"])}"><td>{digest(q["digest"])}</td>'
        f"<td>{short(q.get('commit'))}</td><td>{escape(q.get('model_version') or '—')}</td>"
        f"<td>{escape(q.get('target') or '—')}</td><td>{when(q.get('at'))}</td>"
        f'<td class="reason">{escape((q.get("reason") or "no reason recorded").splitlines()[0][:300])}</td>'
        f"<td>{run_link(q.get('run'), 'release')}</td></tr>"
        for q in rows
    ]


def model_rows(rows: list[Mapping[str, Any]]) -> list[str]:
    out = []
    for m in rows:
        accuracy = f"{m['accuracy']:.4f}" if isinstance(m.get("accuracy"), int | float) else "—"
        aliases = " ".join(badge(a, "alias") for a in m.get("aliases") or []) or '<span class="muted">—</span>'
        out.append(
            f'<tr class="model" data-version="{escape(m["version"])}"><td>{escape(m["name"])} {escape(m["version"])}'
            f"</td><td>{accuracy}</td><td>{aliases}</td><td>{short(m['sha256'])}</td><td>{when(m.get('created_at'))}"
            f"</td><td>{run_link(m.get('promoted_by'), 'model_refresh')}</td></tr>"
        )
    return out


def render(data: Mapping[str, Any], user: str) -> str:
    """The whole page for `user` from an overview dict (modelship.overview.overview)."""
    errors = data.get("errors") or {}
    problems = "".join(f'<li><b>{escape(k)}</b>: {escape(v)}</li>' for k, v in errors.items())
    notice = f'<ul class="errors">{problems}</ul>' if problems else ""
    targets = "".join(target_card(t) for t in data["targets"])
    history = table(("ended (UTC)", "target", "outcome", "image", "commit", "model", "serving after", "approved by",
                     "runs", ""), history_rows(data["history"]), "No deployment recorded yet.", "history")  # fmt: skip
    quarantined = table(("image", "commit", "model", "target", "since", "why", "run"),
                        quarantine_rows(data["quarantined"]), "No image is quarantined.", "quarantined")  # fmt: skip
    models = table(("version", "accuracy", "aliases", "manifest sha256", "published", "promoted by"),
                   model_rows(data["models"]), "No model version published yet.", "models")  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Deployments · modelship</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="static/page.css"></head>
<body>
<header><h1>Deployments</h1><span class="muted">as of {when(data["generated_at"])} · {escape(user)}</span>
<a class="refresh" href="deployments">Refresh</a></header>
{notice}
<div id="action" class="action" role="status" hidden></div>
<div id="confirm" class="confirm" role="alertdialog" hidden><p class="question"></p><p class="why"></p>
<button type="button" class="force">Deploy it anyway</button> <button type="button" class="cancel">Cancel</button></div>
<div class="cards">{targets}{desired_card(data.get("desired"), errors.get("desired state"))}</div>
<section class="panel"><h2>Quarantined images</h2>{quarantined}</section>
<section class="panel"><h2>History</h2>{history}</section>
<section class="panel"><h2>Model versions</h2>{models}</section>
<script src="static/page.js"></script>
</body></html>
"""
