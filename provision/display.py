"""What a person sees: rich renderings of every command's result.

Only the CLI calls these, with a console on stdout or stderr; everything here is presentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from provision.build import BuildResult
    from provision.doctor.report import DoctorReport
    from provision.errors import NoViablePlan
    from provision.host import HostProfile
    from provision.plan.document import Plan
    from provision.render.usecase import RenderResult
    from provision.smoke.report import SmokeReport

__all__ = [
    "show_build",
    "show_findings",
    "show_host",
    "show_models",
    "show_no_plan",
    "show_plan",
    "show_render",
    "show_smoke",
]


def show_host(host: HostProfile, console: Any) -> None:
    """The profile as a person reads it: the machine on one line, then a table of GPUs."""
    from rich.table import Table

    console.print(f"[bold]{host.os} {host.arch}[/], Python {host.python}, "
                  f"RAM {host.ram_bytes / 1e9:.1f} GB"
                  + (f", disk free {host.disk_free_bytes / 1e9:.0f} GB" if host.disk_free_bytes else ""))
    if host.nvidia is None:
        console.print("No NVIDIA driver or GPU: CPU only.")
        return
    nv = host.nvidia
    console.print(f"NVIDIA driver {nv.driver_version}, CUDA {nv.cuda_driver_version or '(derived from driver)'}")
    table = Table("GPU", "name", "compute capability", "total", "free")
    for g in nv.gpus:
        table.add_row(str(g.index), g.name, g.cc_text, f"{g.memory_total_bytes / 1e9:.1f} GB",
                      f"{g.memory_free_bytes / 1e9:.1f} GB")
    console.print(table)


def show_models(doc: dict[str, Any], console: Any) -> None:
    """The catalog, two lines a model: ids and repo ids are what users copy, so nothing wraps or cuts them."""
    from rich.markup import escape

    for m in doc["models"]:
        default = " (default)" if m["default"] else ""
        console.print(f"[bold]{escape(m['id'])}[/]{default}  {escape(m['repo'] or '-')}", soft_wrap=True)
        facts = [f"{m['parameters'] / 1e9:.2f} B parameters", "vision" if m["vision"] else "text only"]
        if m["served_model_name"]:
            facts.append(f"served as {m['served_model_name']}, context {m['serving_context']:,} tokens")
        console.print("    " + escape(", ".join(facts)), soft_wrap=True)
    console.print("--model takes an id, a repo id (any case) or a directory holding config.json.", soft_wrap=True)


def show_plan(plan: Plan, console: Any) -> None:
    """A readable plan: the choice on top, then every reason and warning."""
    import shlex

    from rich.markup import escape
    from rich.table import Table

    p = plan.placement
    where = f"GPU {', '.join(map(str, p.gpus))}" if p.gpus else p.device.upper()
    source = plan.model_repo or "local directory"
    s = plan.serve  # what users deploy comes first
    held = f"; KV cache for {s.kv_cache_tokens:,} tokens" if s.kv_cache_tokens else ""
    console.print(f"[bold]serve:[/] {s.engine} {s.engine_version} as {escape(repr(s.served_model_name))} on port "
                  f"{s.port}, {s.max_model_len:,} tokens, tensor parallel {s.tensor_parallel_size}{held}")
    console.print(escape(shlex.join(s.argv)), soft_wrap=True)
    console.print(f"[bold]{plan.model_id}[/] ({source}): [bold]{p.precision}[/] on {where}, "
                  f"torch {plan.torch_version} {escape('[' + plan.variant + ']')}, Python {plan.python}")
    workload = next((r.choice for r in plan.reasons if r.decision == "workload"), None)
    budgeted = f" for {escape(workload)}" if workload else ""
    console.print(f"memory: {p.required_bytes / 1e9:.1f} GB needed of {p.available_bytes / 1e9:.1f} GB{budgeted} "
                  f"({', '.join(f'{k} {v / 1e9:.2f}' for k, v in p.breakdown.items())})")
    table = Table("decision", "choice", "why", show_lines=False)
    for r in plan.reasons:
        table.add_row(escape(r.decision), escape(r.choice), escape(r.why))
    console.print(table)
    pins = "  ".join(f"{k}=={v}" for k, v in sorted(plan.packages.items()))
    console.print(f"pins: {pins}")
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")


def show_no_plan(exc: NoViablePlan, console: Any) -> None:
    """The message and every remedy, one per line."""
    from rich.markup import escape

    console.print(f"[red]no viable plan:[/] {escape(exc.message)}")
    for remedy in exc.remedies:
        console.print(f"  - {escape(remedy)}")


def show_smoke(report: SmokeReport, console: Any) -> None:
    """A smoke report; a tiny or synthetic run says so in words, never passing for the 9B.

    An endpoint proof shows the server, the agent's request and the load probe instead.
    """
    from rich.markup import escape

    from provision.smoke.report import ENDPOINT_SOURCE, endpoint_lines

    if report.source == ENDPOINT_SOURCE:
        for line in endpoint_lines(report):
            console.print(escape(line), soft_wrap=True)
        return
    console.print(f"[bold green]smoke ok[/]: {escape(report.label)}, {report.precision} on {report.device}")
    peak, est = report.peak_memory_bytes, report.estimated_memory_bytes
    console.print(f"  load {round(report.load_seconds, 3)} s, peak memory {int(peak or 0) / 1e9:.2f} GB"
                  + (f" (estimate {int(est) / 1e9:.2f} GB)" if est else "")
                  + f", {report.tokens_generated} tokens at {round(report.tokens_per_second, 3)} tok/s")
    if report.processor or report.server_args:
        console.print(f"  loaded as the server loads it: processor {escape(report.processor or 'n/a')}; "
                      f"transformers serve {escape(' '.join(report.server_args)) or '(no load flags recorded)'}")


def show_render(result: RenderResult, console: Any) -> None:
    """What a render wrote, and why its hashes are incomplete when they are."""
    state = result.hash_status if result.hashes is not None else "none (--no-resolve)"
    console.print(f"rendered {len(result.files)} files into {result.out} ({len(result.changed)} changed); "
                  f"hashes: {state}")
    if result.hashes is not None and result.hashes.status != "complete":
        for reason in result.hashes.reasons:
            console.print(f"  - {reason}")


def show_build(result: BuildResult, out: Path, console: Any) -> None:
    """The environment built or reused, and where its smoke report is."""
    console.print(f"environment {'reused' if result.reused else 'built'}: {result.venv} ({result.seconds:.1f} s)")
    if result.smoke is not None and result.smoke_reused:
        console.print(f"smoke test not rerun: nothing it depends on changed since it passed (the lock, the toolkit, "
                      f"the weights); its report: {out / 'smoke.json'} (delete it to run the test again)")
    elif result.smoke is not None:
        console.print(f"smoke report: {out / 'smoke.json'}")


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def show_findings(report: DoctorReport, console: Any) -> None:
    """The doctor's findings as a table (a fix next to each problem), then the verdict."""
    from rich.markup import escape
    from rich.table import Table

    from provision.doctor.report import MARKS, shown_fix

    table = Table("status", "check", "finding", show_lines=True)
    table.columns[2].overflow = "fold"  # a path or version is wrapped whole, never cut with an ellipsis
    fixes = []
    for f in report.findings:
        fix = shown_fix(f)
        table.add_row(f"[{_STYLE[f.status]}]{MARKS[f.status]}[/]", escape(f.check), escape(f.message))
        if fix:
            fixes.append((f, fix))
    console.print(table)
    for f, fix in fixes:  # commands to copy: outside the table, one per line, never wrapped or cut
        console.print(f"[{_STYLE[f.status]}]fix {escape(f.check)}:[/]")
        for line in fix.splitlines():
            console.print(f"  {escape(line)}", soft_wrap=True, highlight=False)
    console.print(f"{'[green]healthy[/]' if report.ok else '[bold red]problems found[/]'}: {report.tally()}")
