"""Configs read from files are data (issue 23): no network, no environment, bounded loading, one line per fault."""

from __future__ import annotations

import copy
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from omegaconf import OmegaConf

from unet_train.cpus import usable_cpus
from unet_train.engine.checkpoint import FORMAT, load_checkpoint
from unet_train.engine.fit import fit
from unet_train.errors import CheckpointError, ConfigError
from unet_train.plan.planner import load_plan
from unet_train.trust import UntrustedConfigError

from .conftest import TINY, compose_config
from .test_trust import tiny_checkpoint

BIN = Path(sys.executable).parent
# Runs a console script's entry point once per case in one process, each case's stderr after a marker line.
DRIVER = """
import json, sys
from importlib import import_module
module, func = sys.argv[1].split(":")
main = getattr(import_module(module), func)
codes = {}
for name, args in json.loads(sys.argv[2]).items():
    sys.stderr.write("CASE " + name + "\\n"); sys.stderr.flush()
    sys.argv = [module, *args]
    try:
        main()
        codes[name] = 0
    except SystemExit as exc:
        codes[name] = exc.code
print("CODES " + json.dumps(codes))
"""


def drive(entry: str, cases: dict[str, list[str]], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Each case's exit status and stderr lines (log lines and tracebacks), run by :data:`DRIVER`."""
    (cwd / "driver.py").write_text(DRIVER)
    result = subprocess.run(
        [sys.executable, str(cwd / "driver.py"), entry, json.dumps(cases)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    codes = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("CODES "))[6:])
    errs: dict[str, list[str]] = {}
    name = None
    for line in result.stderr.splitlines():
        if line.startswith("CASE "):
            name = line[5:]
            errs[name] = []
        elif name is not None and line.strip():
            errs[name].append(line)
    return {case: (codes[case], errs.get(case, [])) for case in cases}


def one_line(outcome: tuple[int, list[str]]) -> str:
    """The single error line of a case that exited 2 (the message after the logger's prefix)."""
    code, lines = outcome
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], outcome
    return lines[0].split(" - ", 1)[-1]


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Recorder.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server():
    """A local HTTP server on a free port that records every request it gets."""
    Recorder.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Recorder.requests
    httpd.shutdown()
    httpd.server_close()


def isbi_config(root: Path, urls: list[str]) -> dict[str, Any]:
    """A tiny checkpoint's config whose data is ISBI 2012 with a download from ``urls`` into ``root``."""
    config = tiny_checkpoint()["config"]
    for key in ("image_size", "num_train", "num_val", "num_test", "cells_per_image", "membrane_width", "seed"):
        config["data"].pop(key)
    config["data"].update({"_target_": "unet_train.data.ISBI2012", "root": str(root), "download": True, "urls": urls})
    return config


@pytest.mark.slow
def test_no_file_borne_config_sends_a_request_or_creates_its_root(server, tmp_path):
    url, requests = server
    leak = f"{url}/leak/${{oc.env:SECRET_TOKEN}}/${{hydra:runtime.cwd}}/{{name}}"
    root = tmp_path / "isbi_root"
    base = tiny_checkpoint()
    files = {}
    for name, urls in {"secret": [leak], "plain": [f"{url}/plain/{{name}}"]}.items():
        checkpoint = {**copy.deepcopy(base), "config": isbi_config(root, urls)}
        files[name] = tmp_path / f"{name}.pt"
        torch.save(checkpoint, files[name])
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"data:\n  download: true\n  root: {root}\n  urls: ['{leak}']\n")
    env = {**os.environ, "SECRET_TOKEN": "hunter2"}
    eval_runs = drive(
        "unet_train.evaluate:main",
        {
            "secret": [f"ckpt={files['secret']}", "save_predictions=false"],
            "plain": [f"ckpt={files['plain']}", "save_predictions=false"],
            "download without root": [f"ckpt={files['plain']}", "save_predictions=false", "data.download=true"],
        },
        tmp_path, env,
    )  # fmt: skip
    train_runs = drive(
        "unet_train.train:main",
        {"resume": [f"ckpt={files['secret']}"], "plan": ["data=isbi", f"data.root={root}", f"+plan={plan}"]},
        tmp_path, env,
    )  # fmt: skip
    assert requests == []
    assert not root.exists()
    assert "is an interpolation" in one_line(eval_runs["secret"]) and "hunter2" not in str(eval_runs)
    assert "is an interpolation" in one_line(train_runs["resume"])
    assert one_line(train_runs["plan"]).startswith(f"plan={plan} sets data.root, which a plan may not set")
    # Without an interpolation, the file's download is off and its URLs gone: the data is just not there.
    code, lines = eval_runs["plain"]
    assert code == 2 and f"ISBI 2012 file train-volume.tif not found in {root}" in lines[-1], lines
    assert one_line(eval_runs["download without root"]).startswith(
        f"data.download=true with the data config of checkpoint {files['plain']} needs data.root=DIR"
    )
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("resolved_config.yaml"))


def test_hydra_and_environment_payloads_are_refused_before_anything_is_built(tmp_path):
    checkpoint = tiny_checkpoint()
    checkpoint["config"]["data"]["val_transform"] = "${hydra:callbacks.summarize}"
    path = tmp_path / "hydra.pt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedConfigError) as info:
        load_checkpoint(path, trust=["my_pkg"])  # trusting a module of one's own trusts no interpolation
    assert str(info.value).startswith(
        "config.data.val_transform='${hydra:callbacks.summarize}' is an interpolation, which a config read from a "
        f"file may not hold (it could read the environment or the runtime); refusing to build it (checkpoint {path})."
    )


def test_a_file_borne_data_config_keeps_no_download_urls_or_extra_workers(tmp_path):
    checkpoint = tiny_checkpoint()
    checkpoint["config"]["data"].update(download=True, urls=["http://x/{name}"], num_workers=10_000)
    path = tmp_path / "ok.pt"
    torch.save(checkpoint, path)
    data = load_checkpoint(path)["config"]["data"]
    assert data["download"] is False and "urls" not in data and data["num_workers"] == usable_cpus()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("trust_config: true\n", "trust_config"),
        ("ckpt: /runs/x/checkpoints/last.pt\n", "ckpt"),
        ("hydra:\n  run:\n    dir: /tmp/elsewhere\n", "hydra"),
        ("paths:\n  output_dir: /tmp/elsewhere\n", "paths"),
        ("data:\n  root: /somewhere\n", "data.root"),
        ("data:\n  download: true\n", "data.download"),
        ("data:\n  urls: ['http://x/{name}']\n", "data.urls"),
    ],
)
def test_a_plan_may_not_set_what_only_the_command_line_decides(tmp_path, text, key):
    path = tmp_path / "plan.yaml"
    path.write_text("# @package _global_\nmodel:\n  base_channels: 8\n" + text)
    with pytest.raises(UntrustedConfigError) as info:
        load_plan(path, trusted=True)  # not even a trusted plan: trust_config concerns components
    assert str(info.value) == (
        f"plan={path} sets {key}, which a plan may not set (only the command line decides it); "
        "remove it from the plan and pass it on the command line if you meant it."
    )


def test_a_plan_caps_the_model_and_the_workers_it_asks_for(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("model:\n  base_channels: 100000\n")
    with pytest.raises(UntrustedConfigError) as info:
        load_plan(path)
    assert str(info.value) == (
        f"plan={path} sets model.base_channels=100000, over the 1024 a plan may set; pass model.base_channels=100000 "
        "on the command line if you mean it."
    )
    path.write_text("model:\n  base_channels: 32\ndata:\n  num_workers: 100000\n")
    assert OmegaConf.to_container(load_plan(path)) == {
        "model": {"base_channels": 32},
        "data": {"num_workers": usable_cpus()},
    }


# A child process that times one call and prints the outcome; the bombs never return on unbounded code.
TIMED = """
import sys, time, json, resource
from pathlib import Path
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.plan.planner import load_plan
from unet_train.errors import UserError
if sys.argv[3] != "0":  # an address-space limit this far above what the process holds now
    held = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (held + int(sys.argv[3]), resource.RLIM_INFINITY))
start = time.perf_counter()
try:
    {"plan": load_plan, "ckpt": load_checkpoint}[sys.argv[1]](sys.argv[2])
    message = "loaded"
except UserError as exc:
    message = str(exc)
print(json.dumps({"seconds": time.perf_counter() - start, "message": message}))
"""


def timed(kind: str, path: Path, limit_bytes: int = 0) -> dict[str, Any]:
    script = path.parent / "timed.py"
    script.write_text(TIMED)
    result = subprocess.run(
        [sys.executable, str(script), kind, str(path), str(limit_bytes)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_a_yaml_alias_bomb_is_refused_within_a_second(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    path = tmp_path / "plan.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert len(path.read_bytes()) < 600  # expands to 9**8 = 43 million strings
    outcome = timed("plan", path)
    assert outcome["seconds"] < 1
    assert outcome["message"].startswith(f"plan={path} is not a readable YAML file: it uses a YAML anchor or alias")


def torch_archive(tmp_path: Path, records: dict[str, bytes]) -> Path:
    """``torch.save`` of a small checkpoint, with some of its zip records replaced (data.pkl: by suffix)."""
    source, target = tmp_path / "source.pt", tmp_path / "crafted.pt"
    torch.save({"format": FORMAT, "config": {}, "model": {"w": torch.zeros(4)}}, source)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as out:
        for info in original.infolist():
            suffix = next((s for s in records if info.filename.endswith(s)), None)
            out.writestr(info.filename, original.read(info) if suffix is None else records[suffix])
    return target


def memo_bomb(depth: int) -> bytes:
    """A pickle of ``{format, config, model, x: {T: 1}}`` where ``T = (T', T')``, ``depth`` times: tuples shared
    through the memo, each level doubling the tree that hashing the dict key walks (2**depth nodes)."""

    def text(value: str) -> bytes:
        return b"X" + len(value).to_bytes(4, "little") + value.encode()

    out = b"\x80\x02}q\x00(" + text("format") + text(FORMAT) + text("config") + b"}" + text("model") + b"}"
    out += text("x") + b"}" + b"K\x01\x85q\x01"  # the inner dict, then (1,) as memo 1
    # Each level pairs the tuple on the stack with itself from the memo: (T, T), memoised in turn.
    out += b"".join(b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) for i in range(1, depth + 1))
    return out + b"K\x01su."  # {T: 1}, then the outer dict's items


def test_a_pickle_memo_bomb_is_refused_within_a_second(tmp_path):
    path = torch_archive(tmp_path, {"data.pkl": memo_bomb(60)})
    outcome = timed("ckpt", path)
    assert outcome["seconds"] < 1
    assert outcome["message"] == (
        f"Refused to load {path}: its data.pkl shares objects so that they expand to over 5000000 nodes (a few "
        "bytes that would take the memory or the time of the machine); only load checkpoints written by unet-train."
    )
    small = torch_archive(tmp_path, {"data.pkl": memo_bomb(8)})  # the same shape, small: loads, then refused
    assert "not a usable unet-train checkpoint" in timed("ckpt", small)["message"]  # config {} has no model


@pytest.mark.slow
def test_a_compressed_record_is_refused_before_memory_grows(tmp_path):
    source = torch_archive(tmp_path, {})
    target = tmp_path / "deflated.pt"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as out:
        for info in original.infolist():
            if info.filename.endswith("data/0"):  # the tensor's storage: 1 GiB of zeros, deflated to ~1 MB
                deflated = zipfile.ZipInfo(info.filename)
                deflated.compress_type = zipfile.ZIP_DEFLATED
                with out.open(deflated, "w", force_zip64=True) as record:
                    chunk = bytes(1 << 20)
                    for _ in range(1024):
                        record.write(chunk)
            else:
                out.writestr(info.filename, original.read(info))
    assert target.stat().st_size < 4 << 20
    outcome = timed("ckpt", target, limit_bytes=512 << 20)  # half of what the record would take
    assert outcome["message"].startswith(f"Refused to load {target}: its record ")
    assert "is compressed, which torch.save never writes" in outcome["message"]


def test_a_record_larger_than_the_file_is_refused(tmp_path):
    path = torch_archive(tmp_path, {})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    # The central directory's sizes of that record (uncompressed then compressed are at +20 and +24 of its entry).
    offset = data.index(info.filename.encode(), data.index(b"PK\x01\x02")) - 46
    data[offset + 20 : offset + 28] = (1 << 30).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="declares 1073741824 bytes that the file does not hold"):
        load_checkpoint(path)


# -- structurally wrong checkpoints: one line, exit 2, nothing written ---------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    """A real (tiny, one-epoch) checkpoint, with everything a resume reads."""
    run = tmp_path_factory.mktemp("trained")
    fit(compose_config([*TINY, "trainer.max_epochs=1"]), run)
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def faults(checkpoint: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Per fault: the broken checkpoint and what its one-line message says."""

    def broken(change: Any) -> dict[str, Any]:
        copy_ = copy.deepcopy(checkpoint)
        change(copy_)
        return copy_

    return {
        "no config": (broken(lambda c: c.pop("config")), "its 'config' entry is missing or not a mapping"),
        "no model": (broken(lambda c: c.pop("model")), "its 'model' entry is missing or not a state dict"),
        "model a string": (broken(lambda c: c.update(model="weights")), "its 'model' entry is missing or not"),
        "tensor in config": (
            broken(lambda c: c["config"]["model"].update(base_channels=torch.tensor(4))),
            "config.model.base_channels is a Tensor, where a config holds plain values only",
        ),
        "epoch abc": (broken(lambda c: c["state"].update(epoch="abc")), "its state.epoch='abc' is not a count"),
        "optimizer groups": (
            broken(lambda c: c["optimizer"].update(param_groups=c["optimizer"]["param_groups"][:1])),
            "The checkpoint's optimizer state has parameter groups of",
        ),
        "model larger than its weights": (
            broken(lambda c: c["config"]["model"].update(base_channels=4096, depth=6)),
            "does not fit the model asked for: ",
        ),
    }


RESUME_ONLY = ("epoch abc", "optimizer groups")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["unet-train", "unet-eval", "unet-predict", "unet-export"])
def test_each_structural_fault_is_one_line_and_nothing_is_written(trained, tmp_path, command):
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    cases: dict[str, list[str]] = {}
    expected: dict[str, str] = {}
    image = tmp_path / "image.png"
    from skimage import io as skio

    skio.imsave(image, (torch.rand(40, 40) * 255).to(torch.uint8).numpy(), check_contrast=False)
    extra = {
        "unet-train": ["trainer.max_epochs=2"],
        "unet-eval": ["save_predictions=false"],
        "unet-predict": [f"input={image}", f"output={tmp_path / 'pred'}"],
        "unet-export": ["format=torchscript", f"output={tmp_path / 'export'}"],
    }[command]
    for name, (checkpoint, message) in faults(trained).items():
        if name in RESUME_ONLY and command != "unet-train":
            continue
        path = crafted / f"{name.replace(' ', '_')}.pt"
        torch.save(checkpoint, path)
        cases[name], expected[name] = [f"ckpt={path}", *extra], message
    entry = {
        "unet-train": "unet_train.train:main",
        "unet-eval": "unet_train.evaluate:main",
        "unet-predict": "unet_train.predict:main",
        "unet-export": "unet_train.export.cli:main",
    }[command]
    for name, outcome in drive(entry, cases, tmp_path).items():
        assert expected[name] in one_line(outcome), (name, outcome)
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()} - {"driver.py", "image.png"}
    assert not written & {"metrics.json", "resolved_config.yaml", "resume_log.yaml", "last.pt", "best.pt"}
    assert not (tmp_path / "pred").exists() and not (tmp_path / "export").exists()


def test_unet_summarize_reads_no_yaml_alias_from_a_sweep_folder(tmp_path):
    from unet_train.summarize import find_jobs

    job = tmp_path / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text("- &a seed=0\n- *a\n")
    with pytest.raises(ConfigError, match=r"overrides.yaml is not a readable YAML file: it uses a YAML anchor"):
        find_jobs(tmp_path)


def test_a_file_borne_data_config_may_not_pass_download_or_urls_positionally(tmp_path):
    # Breaker, issue 23: ISBI2012(root, download, foreground, train_slices, val_slices, urls) takes them by
    # position too, so data._args_ sent a request to the file's URL and created its root, past the reset.
    root = tmp_path / "victim" / "tree"
    checkpoint = tiny_checkpoint()
    data = checkpoint["config"]["data"]
    data["_target_"] = "unet_train.data.ISBI2012"
    data["_args_"] = [str(root), True, "membrane", "0-24", "25-29", ["http://127.0.0.1:9/leak/{name}"]]
    path = tmp_path / "args.pt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedConfigError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {path} passes its data config positional arguments (data._args_), which a config read from a "
        "file may not: they could ask for a download or name a folder to write; write them as named keys."
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text("data:\n  _args_: [/tmp/x, true]\n")
    with pytest.raises(UntrustedConfigError, match=r"data\._args_"):
        load_plan(plan)
    assert not (tmp_path / "victim").exists()


def test_records_that_share_their_bytes_are_refused(tmp_path):
    # Breaker, issue 23: each record lay inside the file, but 200 central-directory entries naming one 32 MB
    # record made a 33 MB checkpoint allocate 6.4 GB in torch.load. Here: 20 entries on one 64 kB record.
    checkpoint = tiny_checkpoint()
    checkpoint["model"].update({f"extra{i}": torch.zeros(16384) for i in range(20)})
    source, path = tmp_path / "source.pt", tmp_path / "overlap.pt"
    torch.save(checkpoint, source)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as out:
        shared = [info for info in original.infolist() if info.file_size == 16384 * 4]
        for info in original.infolist():
            if info not in shared[1:]:
                out.writestr(zipfile.ZipInfo(info.filename, info.date_time), original.read(info))
        first = next(entry for entry in out.filelist if entry.filename == shared[0].filename)
        for info in shared[1:]:  # the others' entries point at the first one's bytes
            entry = copy.copy(first)
            entry.filename = entry.orig_filename = info.filename
            out.filelist.append(entry)
    assert len(shared) == 20 and torch.load(path, weights_only=True)["model"]["extra19"].shape == (16384,)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"Refused to load {path}: its records declare ")
    assert str(info.value).endswith(
        "bytes that the file does not hold (records that share their bytes); only load checkpoints written by "
        "unet-train."
    )


@pytest.mark.parametrize("nesting", ["[" * 5000 + "]" * 5000, "{a: " * 3000 + "1" + "}" * 3000])
def test_a_deeply_nested_yaml_file_is_one_line(tmp_path, nesting):
    # Breaker, issue 23: 10 kB of brackets in a plan or a sweep folder's overrides.yaml raised RecursionError.
    from unet_train.summarize import find_jobs

    path = tmp_path / "plan.yaml"
    path.write_text(f"a: {nesting}\n")
    with pytest.raises(ConfigError) as info:
        load_plan(path)
    assert str(info.value).startswith(f"plan={path} is not a readable YAML file: it nests over 100 levels deep")
    job = tmp_path / "sweep" / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text(f"- {nesting}\n")
    with pytest.raises(ConfigError, match=r"overrides.yaml is not a readable YAML file: it nests over 100 levels"):
        find_jobs(tmp_path / "sweep")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["config"]["model"].pop("_target_"), "is not a usable unet-train checkpoint: its config's model "
         "section names no _target_ (the model to build)."),
        (lambda c: c["config"]["data"].update(normalize=5), "data.normalize=5 must be a mapping with a scheme "
         "(e.g. data/normalize=scale_linear)."),
    ],
)  # fmt: skip
def test_a_model_without_target_or_a_normalize_of_the_wrong_type_is_one_line(tmp_path, change, message):
    # Breaker, issue 23: both were tracebacks in unet-predict (ConfigAttributeError, TypeError).
    from unet_train.data.normalize import resolve_spec

    checkpoint = tiny_checkpoint()
    change(checkpoint)
    path = tmp_path / "c.pt"
    torch.save(checkpoint, path)
    with pytest.raises((CheckpointError, ConfigError)) as info:
        resolve_spec(load_checkpoint(path)["config"]["data"].get("normalize"))
    assert str(info.value).endswith(message)


def test_a_deeply_nested_checkpoint_config_is_one_line(tmp_path):
    # Breaker, issue 23: a config nested 180 levels (under the pickle's 200) was a RecursionError in unet-predict.
    checkpoint = tiny_checkpoint()
    nested: Any = 1
    for _ in range(180):
        nested = {"a": nested}
    checkpoint["config"]["extra"] = nested
    path = tmp_path / "deep.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path} is not a usable unet-train checkpoint: its config nests over 50 levels deep, which no run config does."
    )


def test_a_component_that_fails_to_build_is_one_line():
    # Breaker, issue 23: model.base_channels='abc' in a checkpoint gave Hydra's three-line InstantiationException.
    from unet_train.build import build_model

    cfg = compose_config([*TINY, "model.base_channels=abc"])
    with pytest.raises(ConfigError) as info:
        build_model(cfg.model)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("Could not build model from its config: Error in call to target ")
