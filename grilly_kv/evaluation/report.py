"""Outputs of the task suite's results (``grilly_kv.evaluation.suite``, and peers' results in the
same schema): merging several result files, the "best per cell" comparison of two engines, the
plots, and writing JSON + Markdown + PNG files.

A result dict holds ``rows`` (accuracy per engine/method/budget/setting/task/context with its
Wilson 95% interval: ``rate``, ``lo``, ``hi``, ``n``, ``k``) and ``perplexity`` (per
engine/method/budget/setting/context: ``ppl`` with its bootstrap ``lo``/``hi``, ``n_tokens``).
"""
from __future__ import annotations

import json
from pathlib import Path

from .stats import intervals_overlap
from .suite import format_perplexity_table, format_table
from .tasks import TASKS, make_suite

ROW_KEY = ("engine", "method", "budget", "setting", "task", "context")
PPL_KEY = ("engine", "method", "budget", "setting", "context")
# Config entries that decide which prompts a run saw: results that differ in them are not
# comparable cell by cell.
TRIAL_KEYS = ("seed", "n_depths")


# ---- merging ----------------------------------------------------------------------------------
def _dedupe(items: list[dict], key_names: tuple[str, ...], value: str, source_of: list[str], kind: str,
            notes: list[str]) -> list[dict]:
    """Keep the first of items with equal keys; a later one with another value is noted."""
    seen: dict[tuple, tuple[dict, str]] = {}
    out = []
    for item, source in zip(items, source_of):
        key = tuple(item[k] for k in key_names)
        if key in seen:
            first, first_source = seen[key]
            if first[value] != item[value]:
                notes.append(f"{kind} {dict(zip(key_names, key))}: {first[value]} in {first_source}, "
                             f"{item[value]} in {source}; kept the first")
            continue
        seen[key] = (item, source)
        out.append(item)
    return out


def _trial_setting(doc: dict, key: str):
    """``doc``'s config value of ``key``; :func:`make_suite`'s default when the config leaves it
    out (the kvpress peer calls make_suite without ``n_depths``)."""
    import inspect

    config = doc.get("config") or {}
    if key in config:
        return config[key]
    return inspect.signature(make_suite).parameters[key].default


def merge_results(docs: list[dict], sources: list[str]) -> dict:
    """One result dict from several (grilly_kv shards and peers): rows and perplexities are
    concatenated, a (method, budget, setting, cell) measured twice is kept once (the first; a
    different second value is listed in ``notes``).

    Raises:
        ValueError: no inputs, an input without ``rows``, or inputs built from different prompts
            (a different ``seed`` or ``n_depths`` in their config).
    """
    if not docs:
        raise ValueError("merge_results needs at least one result")
    if len(docs) != len(sources):
        raise ValueError("merge_results: one source name per result")
    for doc, source in zip(docs, sources):
        if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
            raise ValueError(f"{source}: not a task-suite result (no 'rows' list)")
    for key in TRIAL_KEYS:
        values = [_trial_setting(d, key) for d in docs]
        if len(set(map(json.dumps, values))) > 1:
            raise ValueError(f"the inputs were built from different prompts: config {key} is "
                             + " / ".join(f"{s}: {v}" for v, s in zip(values, sources)))
    notes: list[str] = []
    rows = [r for d in docs for r in d["rows"]]
    row_src = [s for d, s in zip(docs, sources) for _ in d["rows"]]
    ppl = [r for d in docs for r in d.get("perplexity", [])]
    ppl_src = [s for d, s in zip(docs, sources) for _ in d.get("perplexity", [])]
    return {"engine": "merged",
            "merged_from": [{"file": s, "engine": d.get("engine"), "device": d.get("device"),
                             "commit": d.get("commit"), "complete": d.get("complete"), "config": d.get("config")}
                            for d, s in zip(docs, sources)],
            "rows": _dedupe(rows, ROW_KEY, "k", row_src, "accuracy", notes),
            "perplexity": _dedupe(ppl, PPL_KEY, "ppl", ppl_src, "perplexity", notes),
            "notes": notes}


# ---- best per cell ----------------------------------------------------------------------------
def _best(rows: list[dict]) -> dict | None:
    """The most accurate row (ties: the higher lower bound, then the first)."""
    best = None
    for r in rows:
        if r["rate"] is not None and (best is None or (r["rate"], r["lo"]) > (best["rate"], best["lo"])):
            best = r
    return best


def best_per_cell(results_list: list[dict], ours: str = "grilly_kv", peer: str = "kvpress",
                  exclude: tuple[str, ...] = ()) -> list[dict]:
    """For each (task, context, budget, setting) that either engine measured: its best method
    (dense and the methods named in ``exclude`` left out, e.g. policies that keep every token) of
    ``ours`` and of ``peer`` with their Wilson intervals, whether the intervals
    overlap, who leads (``ours``/``peer`` when its interval lies wholly above the other's,
    ``overlap`` otherwise, ``-`` with one side missing) and ``target_met``: ours at least as
    accurate (higher rate, or overlapping intervals); None with one side missing."""
    rows = [r for res in results_list for r in res["rows"]
            if r["budget"] is not None and r["method"] != "dense" and r["method"] not in exclude]
    cells = sorted({(r["task"], r["context"], r["budget"], r["setting"]) for r in rows},
                   key=lambda c: (TASKS.index(c[0]) if c[0] in TASKS else 99, c[0], c[1], c[2], c[3]))
    out = []
    for task, context, budget, setting in cells:
        here = [r for r in rows if (r["task"], r["context"], r["budget"], r["setting"]) == (task, context, budget, setting)]
        a = _best([r for r in here if r["engine"] == ours])
        b = _best([r for r in here if r["engine"] == peer])
        entry = {"task": task, "context": context, "budget": budget, "setting": setting,
                 ours: _brief(a), peer: _brief(b), "overlap": None, "lead": "-", "target_met": None}
        if a is not None and b is not None:
            overlap = intervals_overlap(a, b)
            lead = ours if a["lo"] > b["hi"] else peer if b["lo"] > a["hi"] else "overlap"
            entry.update(overlap=overlap, lead=lead, target_met=bool(overlap or a["rate"] >= b["rate"]))
        out.append(entry)
    return out


def _brief(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: row[k] for k in ("method", "rate", "lo", "hi", "n", "k")}


def format_best_table(best: list[dict], ours: str = "grilly_kv", peer: str = "kvpress") -> str:
    """Markdown of :func:`best_per_cell`: one row per (task, context, budget, setting)."""
    def cell(r):
        return "-" if r is None else f"{r['method']} {r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] n={r['n']}"

    lines = [f"| task | context | budget | setting | best {ours} | best {peer} | intervals overlap | "
             f"leads | {ours} at least as accurate |", "|" + "---|" * 9]
    for e in best:
        overlap = "-" if e["overlap"] is None else ("yes" if e["overlap"] else "no")
        met = "-" if e["target_met"] is None else ("yes" if e["target_met"] else "**no**")
        lines.append(f"| {e['task']} | {e['context']} | {e['budget']} | {e['setting']} | {cell(e[ours])} | "
                     f"{cell(e[peer])} | {overlap} | {e['lead']} | {met} |")
    judged = [e for e in best if e["target_met"] is not None]
    lines.append("")
    lines.append(f"{ours} at least as accurate as {peer} (higher rate or overlapping 95% intervals) in "
                 f"{sum(e['target_met'] for e in judged)} of {len(judged)} cells measured by both.")
    return "\n".join(lines)


# ---- plots --------------------------------------------------------------------------------------
def _series(rows: list[dict], value: str) -> dict[tuple, list[dict]]:
    """``{(engine, method, setting): rows sorted by budget}`` of the budgeted rows."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["budget"] is not None and r.get(value) is not None:
            out.setdefault((r["engine"], r["method"], r["setting"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["budget"]) for k, v in out.items()}


def _draw(ax, series: dict, value: str, colors: dict, dense: list[dict]) -> None:
    """One line with error bars per series (x jittered a little so bars stay apart); each
    dense row as a band (its interval) and a line (its value)."""
    n = max(len(series), 1)
    for i, ((engine, method, setting), rs) in enumerate(sorted(series.items())):
        jitter = 1.0 + 0.03 * (i - (n - 1) / 2) / n
        x = [r["budget"] * jitter for r in rs]
        y = [r[value] for r in rs]
        # clipped at 0: a Wilson bound equals the rate at 0 or 1 up to rounding (-1e-17)
        err = [[max(r[value] - r["lo"], 0.0) for r in rs], [max(r["hi"] - r[value], 0.0) for r in rs]]
        ax.errorbar(x, y, yerr=err, color=colors[(engine, method)], capsize=2, lw=1.2, ms=4,
                    marker="o" if engine == "grilly_kv" else "s", ls="-" if setting == "question-aware" else "--",
                    label=f"{method} ({engine}, {setting})")
    for d in dense:
        ax.axhspan(d["lo"], d["hi"], color=colors.get((d["engine"], "dense"), "0.5"), alpha=0.15, lw=0)
        ax.axhline(d[value], color=colors.get((d["engine"], "dense"), "0.5"), lw=1, ls=":",
                   label=f"dense ({d['engine']}) and its 95% interval")


def _colors(rows: list[dict]) -> dict:
    import matplotlib.pyplot as plt

    keys = sorted({(r["engine"], r["method"]) for r in rows})
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _finish(fig, axes, budgets: list[int], title: str, path: Path) -> None:
    for ax in axes.flat:
        ax.set_xscale("log")
        if budgets:
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.set_xlim(min(budgets) / 1.4, max(budgets) * 1.4)      # end points and bars stay inside
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_accuracy(results_list: list[dict], path: Path, title: str = "") -> None:
    """Accuracy against budget, one panel per (task, context): one line per engine, method and
    setting with Wilson 95% error bars; dense as a reference band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for res in results_list for r in res["rows"] if r["rate"] is not None]
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (TASKS.index(t) if t in TASKS else 99, t))
    contexts = sorted({r["context"] for r in rows})
    colors = _colors(rows)
    fig, axes = plt.subplots(max(len(tasks), 1), max(len(contexts), 1), squeeze=False,
                             figsize=(3.6 * max(len(contexts), 1), 2.8 * max(len(tasks), 1)))
    for i, task in enumerate(tasks):
        for j, context in enumerate(contexts):
            here = [r for r in rows if r["task"] == task and r["context"] == context]
            _draw(axes[i][j], _series(here, "rate"), "rate", colors, [r for r in here if r["budget"] is None])
            axes[i][j].set(title=f"{task}, {context} tokens", ylim=(-0.05, 1.05))
            axes[i][j].set_ylabel("accuracy" if j == 0 else "")
            axes[i][j].set_xlabel("budget (tokens per KV head)" if i == len(tasks) - 1 else "")
    _finish(fig, axes, sorted({r["budget"] for r in rows if r["budget"] is not None}), title, path)
    plt.close(fig)


def plot_perplexity(results_list: list[dict], path: Path, title: str = "") -> None:
    """Held-out perplexity against budget, one panel per context, bootstrap 95% error bars;
    dense as a reference band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for res in results_list for r in res.get("perplexity", [])]
    contexts = sorted({r["context"] for r in rows})
    colors = _colors(rows)
    fig, axes = plt.subplots(1, max(len(contexts), 1), squeeze=False, figsize=(4.2 * max(len(contexts), 1), 3.4))
    for j, context in enumerate(contexts):
        here = [r for r in rows if r["context"] == context]
        _draw(axes[0][j], _series(here, "ppl"), "ppl", colors, [r for r in here if r["budget"] is None])
        axes[0][j].set(title=f"context {context} tokens", xlabel="budget (tokens per KV head)",
                       ylabel="perplexity" if j == 0 else "")
    _finish(fig, axes, sorted({r["budget"] for r in rows if r["budget"] is not None}), title, path)
    plt.close(fig)


# ---- files --------------------------------------------------------------------------------------
def markdown(results_list: list[dict], heading: str = "") -> str:
    """Accuracy table and (when measured) perplexity table, each with 95% intervals."""
    parts = [f"# {heading}\n" if heading else "",
             "Accuracy per (task, context): rate [Wilson 95% interval] n=prompts.\n", format_table(results_list)]
    ppl = format_perplexity_table(results_list)
    if ppl:
        parts += ["\nHeld-out perplexity per context: value [block-bootstrap 95% interval] n=targets.\n", ppl]
    return "\n".join(p for p in parts if p) + "\n"


def write_outputs(results: dict, out_dir: Path, stem: str, title: str = "", extra_markdown: str = "") -> list[Path]:
    """``stem.json``, ``stem.md`` (tables with 95% intervals, then ``extra_markdown``),
    ``stem_accuracy.png`` and, when perplexity was measured, ``stem_perplexity.png`` in
    ``out_dir``. Each file is written to a temporary name and renamed, so a run killed while
    writing leaves the previous complete file, never a truncated one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}_accuracy.png"]
    _replace(paths[0], lambda tmp: tmp.write_text(json.dumps(results, indent=1) + "\n"))
    _replace(paths[1], lambda tmp: tmp.write_text(markdown([results], title) + extra_markdown))
    _replace(paths[2], lambda tmp: plot_accuracy([results], tmp, title))
    if results.get("perplexity"):
        paths.append(out_dir / f"{stem}_perplexity.png")
        _replace(paths[3], lambda tmp: plot_perplexity([results], tmp, title))
    return paths


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")     # same suffix: matplotlib picks the format
    write(tmp)
    tmp.replace(path)
