"""`unclip eval`: judge a model's images on the shapes world's held-out prompts, print and save the table."""

import json
from pathlib import Path


from unclip_cli.cli import interrupts
from unclip_cli.cli.run import StageProgress, check_model, dtype_name, pick_device, pick_dtype, quiet
from unclip_cli.errors import UnclipError
from unclip_cli import options
from unclip_cli.pipeline import images, stages as stages_mod
from unclip_cli.shapes import evaluate as ev
from unclip_cli.weights import registry


def read_prompts(path: Path) -> list[tuple[str, bool]]:
    """(prompt, uses a held-out combination) for each line of a prompts file; a line outside the shapes
    world's grammar is an error naming it."""
    from unclip_cli.shapes import world

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UnclipError(f"--prompts {path}: cannot read it ({e})") from None
    out = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            out.append((text, world.uses_heldout(text)))
        except ValueError as e:
            raise UnclipError(f"--prompts {path} line {n}: {e}") from None
    if not out:
        raise UnclipError(f"--prompts {path}: no prompts in it")
    return out


def run(model, per_prompt: int, ablation: bool, seed: int, size: int | None, sampling: dict, device: str, out,
        prompts_file: Path | None = None, dtype: str = "auto") -> dict:
    if problem := options.first_problem(sampling):
        raise UnclipError(problem)
    if per_prompt < 1:
        raise UnclipError(f"--per-prompt must be at least 1, got {per_prompt}")
    prompts = read_prompts(prompts_file) if prompts_file else None
    dev = pick_device(device)
    spec = registry.resolve(model)
    check_model(spec, sampling, image_encoder="unclip eval (its CLIP score)", prior="unclip eval", reranks=True)
    stages, _ = stages_mod.open_model(spec, dev, pick_dtype(dtype, dev), size, keep_loaded=True)
    size = size or stages.decoder_size()
    opts = options.resolve(stages.spec.defaults, sampling, size)
    modes = ("caption", "text_embed", "prior") if ablation else ("prior",)
    progress = StageProgress(quiet())
    try:
        with progress.progress:
            results = ev.evaluate(stages, opts, per_prompt=per_prompt, seed=seed, modes=modes, prompts=prompts,
                                  report=progress)
    except interrupts.Interrupted as e:
        e.message = "interrupted: no results written (unclip eval writes its table at the end)"
        raise
    results = {"model": stages.spec.name, "per_prompt": per_prompt, "seed": seed, "size": size,
               "dtype": dtype_name(stages.dtype),
               "prompts": str(prompts_file) if prompts_file else "held-out", "options": {o.name: getattr(opts, o.name) for o in options.SAMPLING}, "modes": results}
    print_eval(results)
    if out:
        images.replace_file(Path(out), json.dumps(results, indent=2).encode())
        images.replace_file(Path(out).with_suffix(".md"), eval_markdown(results).encode())
    return results


def _eval_rows(results: dict) -> list[list[str]]:
    """One row of cells per conditioning mode and prompt split (CLIP score and diversity on 'all' only)."""
    from unclip_cli.shapes.evaluate import MODES

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = []
    for mode, r in results["modes"].items():
        for split in ("all_prompts", "unseen_prompts"):
            s = r[split]
            if s is None:
                continue
            o, first = s["overall"], split == "all_prompts"
            one, two = s["one_object"] or {}, s["two_objects"] or {}
            rows.append([MODES[mode], split.split("_")[0], pct(o["color"]), pct(o["shape"]), pct(o["size"]),
                         pct(o["relation"]), pct(one.get("count")), pct(two.get("count")), pct(one.get("all")),
                         pct(two.get("all")),
                         f"{r['clip_score']:.3f}" if first else "", f"{r['diversity']:.3f}" if first else ""])
    return rows


EVAL_COLUMNS = ("conditioning", "prompts", "color", "shape", "size", "relation", "count, 1 object", "count, 2 objects",
                "full caption, 1 object",
                "full caption, 2 objects", "CLIP score", "diversity")


def _failure_columns() -> tuple[str, ...]:
    from unclip_cli.shapes.judge import FAILURES

    return ("conditioning", "objects", *("right" if f == "ok" else f for f in FAILURES))


def _failure_rows(results: dict) -> list[list[str]]:
    """Per mode and object count: how many images were right and the first thing wrong with the others."""
    from unclip_cli.shapes.evaluate import MODES
    from unclip_cli.shapes.judge import FAILURES

    rows = []
    for mode, r in results["modes"].items():
        for kind, tally in r.get("failures", {}).items():
            rows.append([MODES[mode], "1" if kind == "one_object" else "2", *(str(tally.get(f, 0)) for f in FAILURES)])
    return rows


def print_eval(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    table = Table(*EVAL_COLUMNS, title=f"unclip eval {results['model']}")
    for row in _eval_rows(results):
        table.add_row(*row)
    console.print(table)
    table = Table(*_failure_columns(), title="images by the first thing wrong with them")
    for row in _failure_rows(results):
        table.add_row(*row)
    console.print(table)


def _markdown_table(columns, rows) -> list[str]:
    head = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return head + ["| " + " | ".join(r) + " |" for r in rows]


def eval_markdown(results: dict) -> str:
    """The eval results as Markdown tables (what the README shows): accuracies, then images by failure."""
    lines = _markdown_table(EVAL_COLUMNS, _eval_rows(results)) + [""]
    lines += _markdown_table(_failure_columns(), _failure_rows(results))
    return "\n".join(lines) + "\n"
