"""What a person sees: rich renderings of host profiles, plans, no-plans and smoke reports.

Only the CLI calls these, with a console on stdout or stderr; everything here is presentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provision.errors import NoViablePlan
    from provision.host.profile import HostProfile
    from provision.plan.search import Plan

__all__ = ["show_host", "show_no_plan", "show_plan", "show_smoke"]


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


def show_plan(plan: Plan, console: Any) -> None:
    """A readable plan: the choice on top, then every reason and warning."""
    from rich.markup import escape
    from rich.table import Table

    p = plan.placement
    where = f"GPU {', '.join(map(str, p.gpus))}" if p.gpus else p.device.upper()
    source = plan.model_repo or "local directory"
    console.print(f"[bold]{plan.model_id}[/] ({source}): [bold]{p.precision}[/] on {where}, "
                  f"torch {plan.torch_version} {escape('[' + plan.variant + ']')}, Python {plan.python}")
    console.print(f"memory: {p.required_bytes / 1e9:.1f} GB needed of {p.available_bytes / 1e9:.1f} GB "
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


def show_smoke(report: dict[str, Any], console: Any) -> None:
    """A smoke report; a tiny or synthetic run says so in words, never passing for the 9B."""
    from rich.markup import escape

    source = report.get("source")
    label = {"tiny": "TINY stand-in model (same architecture, random weights; not the 9B)",
             "synthetic": "full-size architecture with random weights", "weights": "real weights"}.get(
        str(source), str(source))
    console.print(f"[bold green]smoke ok[/]: {escape(str(report.get('model')))} from {escape(label)}, "
                  f"{report.get('precision')} on {report.get('device')}")
    peak, est = report.get("peak_memory_bytes"), report.get("estimated_memory_bytes")
    console.print(f"  load {report.get('load_seconds')} s, peak memory {int(peak or 0) / 1e9:.2f} GB"
                  + (f" (estimate {int(est) / 1e9:.2f} GB)" if est else "")
                  + f", {report.get('tokens_generated')} tokens at {report.get('tokens_per_second')} tok/s")
