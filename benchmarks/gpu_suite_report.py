"""The GPU suite's Markdown table, from the JSON report (gpu_suite.py writes both)."""

from __future__ import annotations

from typing import Any


def _num(value: Any, digits: int = 3, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}{unit}"
    return f"{value}{unit}"


def _setting(s: dict[str, Any]) -> str:
    frames = f"x{s['num_frames']}" if s.get("num_frames") else ""
    tune = f"LoRA {s['lora_rank']}" if s.get("lora_rank") else s.get("finetune", "")
    return (
        f"{s['height']}x{s['width']}{frames}, {s['steps']} steps, "
        f"{s['prompts_per_gpu']:g}x{s['group_size']} samples, {tune}"
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    mode = "tiny checkpoints" if env["tiny"] else "full-size networks, random bf16 weights"
    lines = [
        f"# GPU suite: {env['device_name']} ({mode})",
        "",
        f"torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']};"
        f" peak FLOP/s: {env['peak_flops_source']}; wall {env.get('wall_s', 0):.0f} s of a"
        f" {env['budget_s']:.0f} s budget.",
        "",
        "Per-unit figures are measured; the last two columns of the second table are computed",
        "from them for the full published setting (one GPU).",
        "",
        "| policy | setting | rollout s/(sample, step) | update s/pair | decode s/sample |"
        " reward s/sample | encode s/prompt | update MFU | peak GiB alloc / reserved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    second = [
        "",
        "| policy | check: measured / predicted s | error | within 15% |"
        " vs diffusers (dance / pipeline) | s/iteration (computed) |"
        " samples per GPU-second (computed) | peak GiB alloc (computed) | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["policies"].items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | | | | | | | | {r.get('status')} |")
            second.append(f"| {name} | | | | | | | | {r.get('status')} |")
            continue
        u, f, m, c = r["units"], r["flops"], r["memory"], r["check"]
        full = r["computed_full_setting"]
        memory = (
            "n/a (CPU)"
            if m["max_allocated_gib"] is None
            else f"{m['max_allocated_gib']:.1f} / {m['max_reserved_gib']:.1f}"
        )
        lines.append(
            f"| {name} | {_setting(r['setting'])} | {_num(u['rollout_s_per_sample_step'])} |"
            f" {_num(u['update_s_per_pair'])} | {_num(u['decode_s_per_sample'])} |"
            f" {_num(u['reward_s_per_sample'])} | {_num(u['encode_s_per_prompt'])} |"
            f" {_percent(f['update_mfu'])} | {memory} |"
        )
        vs = r["vs_diffusers"]
        versus = vs.get("skipped") or (
            f"{vs['ratio']:.2f} ({vs['dance_s']:.3g} s / {vs['diffusers_s']:.3g} s)"
        )
        options = ", ".join(f"{k}={v}" for k, v in r.get("options", {}).items())
        status = "ok" + (f" with {options}" if options else "")
        second.append(
            f"| {name} | {c['measured_s']:.3g} / {c['predicted_s']:.3g} | {_percent(c['error'])} |"
            f" {'yes' if c['within_tolerance'] else 'NO'} | {versus} |"
            f" {full['seconds_per_iteration']:.3g} | {full['samples_per_gpu_second']:.3g} |"
            f" {_num(full['max_allocated_gib'])} | {status} |"
        )
    missing = report.get("policies_without_spec")
    if missing:
        second += ["", f"Installed policies without a benchmark spec: {', '.join(missing)}."]
    return "\n".join(lines + second) + "\n"
