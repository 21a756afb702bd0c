"""An instance model's post-processing as its bioimage.io package states it.

bioimage.io's postprocessing operations act pixel by pixel (sigmoid, softmax, scaling, ...) and cannot express a
seeded watershed or the components of an affinity graph, so the package's own postprocessing stops at the
probabilities. The instance step is recorded in the rdf's free-form ``config`` under ``unet_train`` (the spec asks
a tool to wrap its own keys in one named after it) and in the README: the representation, the method and its
steps, the parameters ``unet-predict`` and ``unet-eval`` use (the checkpoint's tuned ones, else the defaults), what
they were tuned for, the affinity offsets, and which output channel is which map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from unet_train.objects import params as pp
from unet_train.objects.heads import affinity_offsets

# The key of config.unet_train that holds the record (the README names it).
KEY = "instances"
METHODS = {"boundary": "seeded_watershed", "distance": "seeded_watershed", "affinities": "connected_components"}
FUNCTIONS = {"boundary": "from_boundary", "distance": "from_distance", "affinities": "from_affinities"}
# The steps of unet_train.objects.postprocess, with the scikit-image / SciPy calls that do each.
STEPS = {
    "boundary": [
        "foreground = interior + boundary > threshold",
        "seeds = the face-connected components of interior > seed_threshold inside the foreground "
        "(scipy.ndimage.label)",
        "grow the seeds over the boundary probability into the foreground with a face-connected watershed "
        "(skimage.segmentation.watershed; unet-train adds 0.001 x the distance to the nearest seed, scaled to "
        "[0, 1], so that the nearer seed wins where the boundary is flat); a foreground component without a seed "
        "is an object of its own",
        "drop the objects of fewer than min_size pixels and number the rest 1..N",
    ],
    "distance": [
        "foreground = foreground probability > threshold",
        "seeds = the face-connected components of distance > seed_threshold inside the foreground "
        "(scipy.ndimage.label)",
        "grow the seeds down the distance (a face-connected watershed of -distance, skimage.segmentation.watershed) "
        "into the foreground; a foreground component without a seed is an object of its own",
        "drop the objects of fewer than min_size pixels and number the rest 1..N",
    ],
    "affinities": [
        "foreground = foreground probability > 0.5",
        "join each foreground pixel p to its foreground neighbour p + offset, for each joined offset, where the "
        "offset's affinity at p is above threshold",
        "objects = the connected components of that graph (scipy.sparse.csgraph.connected_components)",
        "drop the objects of fewer than min_size pixels and number the rest 1..N",
    ],
}
MEANINGS = {
    ("boundary", "threshold"): "foreground: interior + boundary probability above this",
    ("distance", "threshold"): "foreground: foreground probability above this",
    ("affinities", "threshold"): "two neighbours are one object where their affinity is above this",
    ("boundary", "seed_threshold"): "seeds: interior probability above this",
    ("distance", "seed_threshold"): "seeds: predicted distance above this",
}


def tuned_for(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint's stored parameters were tuned for: the metric, its score on the validation images, the
    untuned default's score and the grid points tried. A checkpoint is untrusted data: only the fields that are
    what tuning writes (an object metric's name, scores in [0, 1], counts) are copied into the package."""
    out: dict[str, Any] = {}
    metric = entry.get("metric")
    if isinstance(metric, str) and metric in pp.OBJECT_METRICS:
        out["metric"] = metric
    for key, name in (("score", "score"), ("default_score", "untuned_score")):
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1:
            out[name] = float(value)
    for key, name in (("tried", "grid_points_tried"), ("total", "grid_points")):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
            out[name] = value
    return out


def instance_config(
    checkpoint: Mapping[str, Any], data: Mapping[str, Any], channel_names: list[str]
) -> dict[str, Any] | None:
    """``config.unet_train.instances`` of the package of a checkpoint (None for a model of classes).

    ``data`` is the checkpoint's data config, ``channel_names`` the package's output channel names. The parameters
    are what ``unet-predict`` uses without ``objects.*`` overrides: the checkpoint's tuned ones (checked as on
    loading), else the defaults (``tuned`` is then null).
    """
    target = pp.instance_target(data)
    if target is None:
        return None
    stored = pp.check_stored(checkpoint.get("postprocess"), data)
    offsets = affinity_offsets(data) if target == "affinities" else None
    channels = pp.map_channels(target, offsets)  # the channels the post-processing reads, by name
    record: dict[str, Any] = {
        "representation": target,
        "method": METHODS[target],
        "function": f"unet_train.objects.postprocess.{FUNCTIONS[target]}",
        "params": pp.merged(target, stored, None),
        "tuned": tuned_for(checkpoint["postprocess"]) if stored is not None else None,
        "output_channels": list(channel_names),
        "maps": dict(channels),
    }
    if offsets is not None:
        record["affinity_offsets"] = [list(o) for o in offsets]  # channel 1 + k is offset k
        record["joined_offsets"] = [list(offsets[k]) for k in pp.face_offsets(offsets)]
    record["steps"] = list(STEPS[target])
    return record


def output_description(record: Mapping[str, Any], binary: bool) -> str:
    """The output tensor's description (bioimage.io allows 128 characters): the channels, and where the instance
    step is."""
    operation = "sigmoid per channel" if binary else "softmax over"
    names = record["output_channels"]
    where = "; instance step: config.unet_train"
    listed = f"{operation}: {', '.join(names)}{where}"
    # many offsets (or long bioimageio.class_names): the channels are counted; the channel axis names them
    rest = "affinities" if record.get("affinity_offsets") else "more channels"
    counted = f"{operation}: {names[0]}, then {len(names) - 1} {rest}{where}"
    return next(d for d in (listed, counted, f"{operation}: {len(names)} channels{where}") if len(d) <= 128)


def readme_lines(record: Mapping[str, Any], ckpt_name: str = "best.pt") -> list[str]:
    """The README's ``# Instances`` section: why the package stops at probabilities, the parameters in a table,
    what they were tuned for, and how to get instances (unet-predict, unet-train's function, or the steps)."""
    target, params = record["representation"], record["params"]
    names = record["output_channels"]
    maps = ", ".join(
        f"{name} = channel{'s' if isinstance(index, list) else ''} "
        + (", ".join(map(str, index)) if isinstance(index, list) else str(index))
        for name, index in record["maps"].items()
    )
    lines = [
        "# Instances",
        "",
        f"The output channels are {', '.join(f'`{n}`' for n in names)}. bioimage.io's postprocessing operations "
        "act pixel by pixel and cannot express "
        + ("the components of an affinity graph" if target == "affinities" else "a seeded watershed")
        + f", so the package's postprocessing stops at the probabilities; the instance step ({record['method']}) "
        f"is recorded in `rdf.yaml` under `config.unet_train.{KEY}`, with these parameters:",
        "",
        "| parameter | value | meaning |",
        "|---|---|---|",
    ]
    for name, value in params.items():
        meaning = MEANINGS.get((target, name), "objects of fewer pixels are dropped")
        lines.append(f"| `{name}` | {value} | {meaning} |")
    tuned = record.get("tuned")
    lines.append("")
    if tuned is None:
        lines.append("They are unet-train's defaults: the checkpoint holds no tuned parameters.")
    else:
        metric = f"for {tuned['metric']} " if "metric" in tuned else ""
        score = f": {tuned['score']:.4f}" if "score" in tuned else ""
        notes = [f"the untuned defaults scored {tuned['untuned_score']:.4f}"] if "untuned_score" in tuned else []
        if {"grid_points_tried", "grid_points"} <= set(tuned):
            notes.append(f"{tuned['grid_points_tried']} of {tuned['grid_points']} grid points tried")
        lines.append(
            f"They were tuned after training {metric}on the validation images{score}"
            + (f" ({'; '.join(notes)})." if notes else ".")
        )
    offsets = record.get("affinity_offsets")
    call = f'instances("{target}", prob, {dict(params)!r}' + (f", {[tuple(o) for o in offsets]!r})" if offsets else ")")
    lines += [
        "",
        f"Channels the post-processing reads: {maps}"
        + (
            f" (the joined offsets {record['joined_offsets']}; the longer ones are training context)."
            if offsets
            else "."
        ),
        "",
        "To get instances:",
        "",
        f"- with the checkpoint: `unet-predict ckpt={ckpt_name} input=image.tif output=pred/` writes "
        "`pred/image_labels.tif` with these parameters (`objects.threshold=...` and the others override them);",
        "- from this package's output, with unet-train installed (`prob`: one image's output, channels first):",
        "",
        "```python",
        "from unet_train.objects.params import instances",
        "",
        f"labels = {call}",
        "```",
        "",
        "- or with scikit-image and SciPy, the same steps:",
        "",
        *(f"  {k}. {step}" for k, step in enumerate(record["steps"], start=1)),
        "",
    ]
    return lines
