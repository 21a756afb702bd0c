"""The report: the machine, each case against the plain baseline and the conv ceiling, the targets; the table."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from typing import Any

import torch

from bench.common import Case, monai_version, summary


def machine(device: torch.device) -> dict[str, Any]:
    from unet_train.engine.runtime import cpu_has_fast_bf16

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def report(
    model_cases: list[Case], conv: list[Case], data: dict[str, Any], memory: dict[str, Any], args, device
) -> dict[str, Any]:
    conv_peak = {c.key: summary(c.samples) | c.info for c in conv}

    def peak_for(precision: str, mode: str) -> float | None:
        key = f"conv/{'bf16' if precision == 'bf16' else 'fp32'}/{'fwd+bwd' if mode == 'train' else 'forward'}"
        return conv_peak[key]["median"] if key in conv_peak else None

    rows = []
    by_key = {c.key: c for c in model_cases}
    for case in model_cases:
        s = summary(case.samples)
        info = case.info
        gflops = s["median"] * info["gflop_per_image"]
        ceiling = peak_for(str(info.get("precision", "32")), info["mode"])
        plain = by_key.get(f"plain/{info['width']}/{info['mode']}")
        rows.append(
            {
                "case": case.key,
                "description": case.label,
                **info,
                "images_per_s": s,
                "gflop_per_s": gflops,
                "fraction_of_conv_peak": gflops / ceiling if ceiling else None,
                "vs_plain": s["median"] / statistics.median(plain.samples) if plain else None,
                "peak_memory_mib": memory.get(case.key),
            }
        )

    def median(key: str) -> float | None:
        c = by_key.get(key)
        return statistics.median(c.samples) if c and c.samples else None

    def ratio(a: str, b: str) -> float | None:
        x, y = median(a), median(b)
        return x / y if x and y else None

    w = 32 if 32 in args.widths and device.type != "cuda" else max(args.widths)
    targets = []

    def target(name: str, value: float | None, goal: float, how: str) -> None:
        targets.append(
            {"target": name, "value": value, "goal": goal, "met": None if value is None else value >= goal, "how": how}
        )

    # On a CPU the default (trainer=cpu) measures its precision (bf16 where native and faster); the fp32 share of
    # the conv peak is then read from the fp32 channels-last case. On CUDA the default is bf16: its fp32 case.
    default_key = "project" if device.type != "cuda" else "project-fp32"
    fp32_key = "project-cl" if device.type != "cuda" else "project-fp32"
    bf16_key = "project-bf16" if device.type != "cuda" else "project"
    default = "default (precision auto)" if device.type != "cuda" else "fp32 default"
    target(
        f"train {default} vs plain, base {w}",
        ratio(f"{default_key}/{w}/train", f"plain/{w}/train"),
        1.3,
        "median ratio",
    )
    target(f"train bf16 vs plain, base {w}", ratio(f"{bf16_key}/{w}/train", f"plain/{w}/train"), 2.0, "median ratio")
    target(f"train default vs MONAI, base {w}", ratio(f"{default_key}/{w}/train", f"monai/{w}/train"), 1.2, "median")
    target(f"inference {default} vs plain, base {w}", ratio(f"{default_key}/{w}/infer", f"plain/{w}/infer"), 1.4, "")
    row = next((r for r in rows if r["case"] == f"{fp32_key}/{w}/train"), None)
    target(
        f"train fp32 share of conv3x3 fp32 fwd+bwd throughput, base {w}",
        row["fraction_of_conv_peak"] if row else None,
        0.75,
        "median GFLOP/s over median conv GFLOP/s",
    )
    consumption = {
        c.key: statistics.median(c.samples)
        for c in model_cases
        if c.info["mode"] == "train" and c.info["name"].startswith("project")
    }
    if "loader_images_per_s" in data and consumption:
        fastest = max(consumption, key=consumption.__getitem__)
        loader = data["loader_images_per_s"]["median"]
        data["model_consumption_images_per_s"] = consumption
        data["loader_vs_fastest_consumer"] = {"consumer": fastest, "ratio": loader / consumption[fastest]}
        target(
            f"ISBI loader ({data['num_workers']} workers) vs fastest project training ({fastest})",
            loader / consumption[fastest],
            2.0,
            "loader alone, median",
        )
        if data.get("device_path_images_per_s"):
            target(
                f"data=isbi_device path (loader + DeviceAugment on the GPU) vs fastest training ({fastest})",
                data["device_path_images_per_s"]["median"] / consumption[fastest],
                1.0,
                "median; >= 1 keeps the GPU fed",
            )
    if device.type == "cuda":
        for key in (f"project/{w}/train", f"project-compile/{w}/train"):
            row = next((r for r in rows if r["case"] == key), None)
            if row:
                target(
                    f"GPU: {key} (bf16, channels-last) share of conv3x3 bf16 fwd+bwd throughput",
                    row["fraction_of_conv_peak"],
                    0.4,
                    "median GFLOP/s over median conv GFLOP/s",
                )

    return {
        "machine": machine(device),
        "settings": {
            "widths": args.widths,
            "depth": args.depth,
            "batch": args.batch,
            "size": args.size,
            "steps_per_sample": args.steps,
            "repeats": args.repeats,
            "quick": args.quick,
        },
        "conv_peak_gflop_per_s": conv_peak,
        "cases": rows,
        "data": data,
        "targets": targets,
    }


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    s = result["settings"]
    print(
        f"\nMachine: {m.get('cpu_model', '?')}, {m['cpu_count']} cores, {m['cpu_capability']}, torch {m['torch']}, "
        f"device {m['device']}; batch {s['batch']} x {s['size']}x{s['size']}, depth {s['depth']}, "
        f"{s['repeats']} repeats x {s['steps_per_sample']} steps"
    )
    print("\n| case | base | mode | images/s median [min-max] | vs plain | GFLOP/s | of conv peak | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["cases"]:
        vs = f"{r['vs_plain']:.2f}x" if r["vs_plain"] else "-"
        frac = f"{100 * r['fraction_of_conv_peak']:.0f}%" if r["fraction_of_conv_peak"] else "-"
        mem = f"{r['peak_memory_mib']:.0f}" if r.get("peak_memory_mib") is not None else "-"
        print(
            f"| {r['name']} | {r['width']} | {r['mode']} | {fmt(r['images_per_s'])} | {vs} | "
            f"{r['gflop_per_s']:.0f} | {frac} | {mem} |"
        )
    for r in result["cases"]:
        if r.get("auto") and r["mode"] == "train":  # once per case: both phases' choices
            for phase, choice in r["auto"].items():
                timings = ", ".join(f"{name} {sec:.3g} s" for name, sec in choice["seconds"].items())
                print(
                    f"\n{r['name']}/{r['width']} {phase}: channels_last={str(choice['channels_last']).lower()}, "
                    f"precision={choice['precision']} (auto; {timings or 'nothing to measure'})"
                )
    print("\n| conv3x3 (channels-last) | GFLOP/s median [min-max] |")
    print("|---|---|")
    for key, c in result["conv_peak_gflop_per_s"].items():
        print(f"| {key} ({c['shape']}) | {fmt(c, 0)} |")
    d = result["data"]
    if "loader_images_per_s" in d:
        a = d["augment_in_process"]
        print(
            f"\nISBI recipe loader ({d['num_workers']} workers, batch {d['batch_size']}, {d['patch_size']}px): "
            f"{fmt(d['loader_images_per_s'])} images/s"
        )
        print(
            f"Augmentation in one process: albumentations recipe {fmt(a['albumentations_images_per_s'])} images/s, "
            f"crop + DeviceAugment on {a['device']} {fmt(a['device_augment_images_per_s'])} images/s"
        )
        if d.get("device_path_images_per_s"):
            print(
                f"data=isbi_device path ({d['num_workers']} workers crop, DeviceAugment on {a['device']}): "
                f"{fmt(d['device_path_images_per_s'])} images/s"
            )
    else:
        print(f"\nData: {d.get('skipped')}")
    print("\n| target | value | goal | met |")
    print("|---|---|---|---|")
    for t in result["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        print(f"| {t['target']} | {value} | {t['goal']} | {met} |")
