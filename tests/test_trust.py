"""A checkpoint's config is data: crafted targets are refused by every command, the project's own pass."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from unet_train.build import build_model
from unet_train.config import config_dir
from unet_train.engine.checkpoint import FORMAT, load_checkpoint
from unet_train.errors import CheckpointError, ConfigError
from unet_train.trust import UntrustedConfigError, allowed_targets, check_config, trusted_modules

from .conftest import TINY, compose_config

REFUSED = "is not a unet-train component; refusing to build it"
HINT = "If you wrote this component, pass trust_config=true or trust_config=[your_module]."
HINT_RESOLVER = "Write the value itself, or pass trust_config=true if you wrote this file."

# Runs a console script's entry point once per case in one process (as the console script would,
# exit status included), so that many crafted files cost one interpreter start per command.
DRIVER = """
import json, sys
from importlib import import_module
module, func = sys.argv[1].split(":")
main = getattr(import_module(module), func)
codes = {}
for name, args in json.loads(sys.argv[2]).items():
    sys.argv = [module, *args]
    try:
        main()
        codes[name] = 0
    except SystemExit as exc:
        codes[name] = exc.code
print("CODES " + json.dumps(codes))
"""


def tiny_checkpoint() -> dict[str, Any]:
    """A legitimate checkpoint of an untrained tiny model (what the crafted copies start from)."""
    cfg = compose_config(TINY)
    model = build_model(cfg.model)
    return {"format": FORMAT, "model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}


def families(canaries: Path) -> dict[str, tuple[str, Any, str]]:
    """Per target family: (config key to replace, crafted node, the key the refusal names).

    Each node, if built, creates something under ``canaries`` (checked by ``test_payloads_are_live``).
    """
    site = canaries / "site"  # an attacker's folder next to the checkpoint, with a .pth file that runs on import
    site.mkdir(parents=True, exist_ok=True)
    (site / "evil.pth").write_text(f"import pathlib; pathlib.Path({str(canaries / 'imports.txt')!r}).write_text('x')\n")

    def path(name: str) -> dict[str, Any]:
        return {"_target_": "pathlib.Path", "_args_": [str(canaries / name)]}

    browser = {"_target_": "webbrowser.GenericBrowser", "_args_": [["sh", "-c", f"touch {canaries / 'proc.txt'}"]]}
    created = '{_target_: pathlib.Path.touch, _args_: ["' + str(canaries / "oc.txt") + '"]}'
    return {
        "file system": (
            "model",
            {"_target_": "pathlib.Path.write_text", "_args_": [path("fs.txt"), "import os"]},
            "config.model._target_='pathlib.Path.write_text'",
        ),
        "processes": (
            "data.train_transform.transforms.1",
            {"_target_": "webbrowser.GenericBrowser.open", "_args_": [browser, "url"]},
            "config.data.train_transform.transforms[1]._target_='webbrowser.GenericBrowser.open'",
        ),
        "imports": (
            "model._args_",
            [{"_target_": "site.addsitedir", "_args_": [str(site)]}],
            "config.model._args_[0]._target_='site.addsitedir'",
        ),
        "logging handlers": (
            "model.dropout",
            {"_target_": "logging.FileHandler", "filename": str(canaries / "log.txt")},
            "config.model.dropout._target_='logging.FileHandler'",
        ),
        "temp files": (
            "data.val_transform",
            {"_target_": "tempfile.mkstemp", "dir": str(canaries), "prefix": "temp-"},
            "config.data.val_transform._target_='tempfile.mkstemp'",
        ),
        "copying files": (
            "data.train_transform.transforms.0.p",
            {"_target_": "shutil.copyfile", "_args_": [__file__, str(canaries / "copy.txt")]},
            "config.data.train_transform.transforms[0].p._target_='shutil.copyfile'",
        ),
        "re-exported by a project module": (
            "model",
            {"_target_": "unet_train.data.base.Path.touch", "_args_": [path("reexport.txt")]},
            "config.model._target_='unet_train.data.base.Path.touch'",
        ),
        "resolver that creates nodes": (
            "data.device_augment",
            "${oc.create:" + created + "}",
            "config.data.device_augment='${oc.create:{_target_: pathlib.Path.touch",
        ),
    }


def craft(base: dict[str, Any], key: str, node: Any) -> dict[str, Any]:
    """A copy of ``base`` with ``config.<key>`` replaced by ``node`` (list items by index)."""
    checkpoint = copy.deepcopy(base)
    checkpoint["config"]["trust_config"] = True  # a file cannot trust itself: this must be ignored
    *parents, last = key.split(".")
    holder = checkpoint["config"]
    for part in parents:
        holder = holder[int(part)] if isinstance(holder, list) else holder[part]
    holder[int(last) if isinstance(holder, list) else last] = node
    return checkpoint


def write_crafted(folder: Path, canaries: Path, base: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, (family, (key, node, named)) in enumerate(families(canaries).items()):
        path = folder / f"crafted_{index}.pt"
        torch.save(craft(base, key, node), path)
        files[family] = (path, named)
    return files


def drive(entry: str, cases: dict[str, list[str]], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, str(cwd / "driver.py"), entry, json.dumps(cases)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[dict[str, int], str]:
    out, err = proc.communicate(timeout=300)
    lines = [line for line in out.splitlines() if line.startswith("CODES ")]
    assert lines, f"driver failed:\n{out}\n{err}"
    return json.loads(lines[-1][len("CODES ") :]), err


# -- the rule itself ---------------------------------------------------------------------------------
def test_the_refusal_is_one_exact_line():
    config = {"model": {"_target_": "pathlib.Path.write_text", "_args_": ["/x/a.pth", "import os"]}}
    with pytest.raises(UntrustedConfigError) as info:
        check_config(config, source="checkpoint /x/evil.pt")
    assert str(info.value) == (
        "config.model._target_='pathlib.Path.write_text' is not a unet-train component; refusing to build it "
        "(checkpoint /x/evil.pt). If you wrote this component, pass trust_config=true or trust_config=[your_module]."
    )
    assert isinstance(info.value, ConfigError)  # the CLIs exit with status 2


def test_targets_hidden_in_partials_arguments_lists_and_non_strings_are_found():
    hidden = {
        "optim": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": {"_target_": "os.getcwd"}},
        "loss": {"_target_": "unet_train.losses.BCELoss", "_args_": [[{"_target_": "shutil.make_archive"}]]},
    }
    with pytest.raises(UntrustedConfigError, match=r"^config\.optim\.lr\._target_='os\.getcwd' is not"):
        check_config({"optim": hidden["optim"]}, source="x")
    with pytest.raises(UntrustedConfigError, match=r"^config\.loss\._args_\[0\]\[0\]\._target_='shutil\.make_archive'"):
        check_config(OmegaConf.create({"loss": hidden["loss"]}), source="x")  # a DictConfig is walked alike
    with pytest.raises(UntrustedConfigError, match=r"^config\.model\._target_=\['unet_train\.models\.UNet'\] is not"):
        check_config({"model": {"_target_": ["unet_train.models.UNet"]}}, source="x")
    # A reference to another key is not a target name, even if that key holds an allowed one.
    with pytest.raises(UntrustedConfigError, match=r"config\.model\._target_='\$\{name\}' is not"):
        check_config({"name": "pathlib.Path.touch", "model": {"_target_": "${name}"}}, source="x")


def test_a_file_borne_config_holds_no_interpolation_at_all():
    # Escaped and dollar-only text is plain; the check never resolves anything.
    for plain in ("a $ {b}", "\\${oc.env:HOME}", "100$", "{name}"):
        check_config({"data": {"root": plain, "num_classes": 2}}, source="x")
    for value in (
        "${oc.env:HOME}",  # the environment (issue 23: secrets sent in a download URL)
        "http://127.0.0.1/leak/${oc.env:SECRET_TOKEN}/${hydra:runtime.cwd}/{name}",
        "${hydra:callbacks.summarize}",  # Hydra's own config: its callbacks are built too
        "${data.root}/x",  # a reference reads the composed config (paths.* of the runtime, for a plan)
        "${now:%H}",
        "${oc.create:{_target_: os.getcwd}}",
        "${${which}:arg}",
        "x/${my.resolver:1}",
        "a ${",  # OmegaConf cannot parse it: refused here rather than failing later
    ):
        with pytest.raises(UntrustedConfigError) as info:
            check_config({"data": {"root": value}}, source="checkpoint c.pt")
        assert str(info.value) == (
            f"config.data.root={value!r} is an interpolation, which a config read from a file may not hold (it could "
            "read the environment or the runtime); refusing to build it (checkpoint c.pt). Write the value itself, "
            "or pass trust_config=true if you wrote this file."
        )
    check_config({"data": {"root": "${oc.env:HOME}"}}, source="x", trusted=True)  # the user's own file


def test_a_users_own_component_passes_only_when_its_module_is_trusted():
    config = {"model": {"_target_": "my_lab.nets.MyNet", "width": 8}}
    with pytest.raises(UntrustedConfigError, match="config.model._target_='my_lab.nets.MyNet' is not"):
        check_config(config, source="x")
    check_config(config, source="x", trusted=True)
    check_config(config, source="x", trusted=["my_lab"])
    check_config(config, source="x", trusted=OmegaConf.create(["other", "my_lab.nets"]))
    with pytest.raises(UntrustedConfigError):
        check_config(config, source="x", trusted=["my_la"])  # a module name, not a string prefix
    assert trusted_modules("my_lab") == ["my_lab"] and trusted_modules(None) is False
    with pytest.raises(ConfigError, match=r"trust_config=5 must be true, false or a list of module names"):
        trusted_modules(5)


def test_the_allow_list_names_exact_components_not_modules():
    allowed = allowed_targets()
    assert {"unet_train.models.UNet", "unet_train.models.unet.UNet", "torch.optim.AdamW"} <= allowed
    assert {"torch.optim.lr_scheduler.ReduceLROnPlateau", "albumentations.ElasticTransform"} <= allowed
    assert {"unet_train.engine.schedulers.cosine", "unet_train.losses.WeightedBCELoss"} <= allowed
    refused = {"albumentations.Lambda", "unet_train.data.base.Path", "torch.save", "unet_train.models.unet.torch"}
    assert not refused & allowed
    assert not any(name.startswith(("unet_train.engine.checkpoint", "unet_train.trust")) for name in allowed)


CONFIG_GROUPS = ("model", "loss", "data", "optim", "sched", "trainer", "experiment")
OPTIONS = [(g, p.stem) for g in CONFIG_GROUPS for p in sorted((config_dir() / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "name"), OPTIONS, ids=[f"{g}/{n}" for g, n in OPTIONS])
def test_every_shipped_option_passes_as_a_checkpoint_stores_it(group, name):
    cfg = compose_config([f"{group}={name}", "seed=3"])
    stored = OmegaConf.to_container(cfg, resolve=True)  # exactly what fit() writes into the checkpoint
    check_config(stored, source=f"{group}={name}")


# -- crafted checkpoints through every command ---------------------------------------------------------
def test_load_checkpoint_refuses_each_family_with_its_key(tmp_path):
    canaries = tmp_path / "canaries"
    for family, (path, named) in write_crafted(tmp_path / "crafted", canaries, tiny_checkpoint()).items():
        with pytest.raises(UntrustedConfigError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(named) and f"(checkpoint {path})" in message and "\n" not in message, family
    assert [p.name for p in canaries.iterdir()] == ["site"]
    bad = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "model": {}, "config": ["not", "a", "mapping"]}, bad)
    with pytest.raises(CheckpointError, match="its 'config' entry is missing or not a mapping"):
        load_checkpoint(bad)


def test_payloads_are_live_when_built(tmp_path, monkeypatch):
    """The crafted nodes do what they would do if nothing checked them (so the tests above can fail)."""
    from hydra.utils import instantiate

    monkeypatch.setattr(sys, "path", list(sys.path))  # site.addsitedir adds a folder to it
    canaries = tmp_path / "canaries"
    for _, node, _ in families(canaries).values():
        if isinstance(node, str):
            node = OmegaConf.to_container(OmegaConf.create({"n": node}), resolve=True)["n"]
        built = instantiate(node)
        if hasattr(built, "close"):  # the log handler's file
            built.close()
        elif isinstance(built, tuple):  # mkstemp's descriptor
            os.close(built[0])
    made = sorted(p.name.split("-")[0] for p in canaries.iterdir())
    expected = ["copy.txt", "fs.txt", "imports.txt", "log.txt", "oc.txt", "proc.txt", "reexport.txt", "site", "temp"]
    assert made == expected


@pytest.mark.slow
def test_unet_eval_predict_and_train_refuse_crafted_checkpoints_and_nothing_runs(tmp_path):
    base = tiny_checkpoint()
    guarded, control = tmp_path / "canaries", tmp_path / "control"
    crafted = write_crafted(tmp_path / "crafted", guarded, base)
    live = write_crafted(tmp_path / "live", control, base)
    (tmp_path / "driver.py").write_text(DRIVER)
    image = tmp_path / "image.png"
    from skimage import io as skio

    skio.imsave(image, (torch.rand(40, 40) * 255).to(torch.uint8).numpy(), check_contrast=False)

    # A user's own model class in their own package: the project's UNet under another name.
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "my_models.py").write_text("from unet_train.models import UNet\n\n\nclass TinyNet(UNet):\n    pass\n")
    own = copy.deepcopy(base)
    own["config"]["model"]["_target_"] = "my_models.TinyNet"
    torch.save(own, tmp_path / "own.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}

    def cases(extra: list[str]) -> dict[str, list[str]]:
        return {family: [f"ckpt={path}", *extra] for family, (path, _) in crafted.items()}

    eval_cases = {
        **cases(["save_predictions=false"]),
        "own, untrusted": [f"ckpt={tmp_path / 'own.pt'}", "save_predictions=false"],
        "own, trusted": [f"ckpt={tmp_path / 'own.pt'}", "save_predictions=false", "trust_config=[my_models]"],
        # The same files with the check switched off: the payloads run (each leaves its canary in control/).
        **{f"live {f}": [f"ckpt={p}", "save_predictions=false", "trust_config=true"] for f, (p, _) in live.items()},
    }
    runs = {
        "unet-eval": drive("unet_train.evaluate:main", eval_cases, tmp_path, env),
        "unet-predict": drive("unet_train.predict:main", cases([f"input={image}", "output=pred"]), tmp_path, env),
        "unet-train": drive("unet_train.train:main", cases(["trainer.max_epochs=1"]), tmp_path, env),
    }
    for command, proc in runs.items():
        codes, err = finish(proc)
        assert "Traceback" not in err.split(str(tmp_path / "live"))[0], (command, err)  # the live ones crash
        for family, (path, named) in crafted.items():
            assert codes[family] == 2, (command, family, err)
            line = next(line for line in err.splitlines() if f"(checkpoint {path})" in line)
            hint = HINT_RESOLVER if "resolver" in family else HINT
            assert line.split(" - ", 1)[1].startswith(named) and line.endswith(hint), (command, line)
        if command == "unet-eval":
            assert codes["own, untrusted"] == 2 and codes["own, trusted"] == 0, err
            assert f"config.model._target_='my_models.TinyNet' {REFUSED} (checkpoint {tmp_path / 'own.pt'})" in err
    # Nothing the crafted files asked for exists; the same files, trusted, did create every canary.
    assert [p.name for p in guarded.iterdir()] == ["site"]
    assert {p.name.split("-")[0] for p in control.iterdir()} == {
        "copy.txt", "fs.txt", "imports.txt", "log.txt", "oc.txt", "proc.txt", "reexport.txt", "site", "temp"
    }  # fmt: skip
    assert not (tmp_path / "pred").exists()  # unet-predict wrote no output
    scored = {json.loads(p.read_text())["details"]["ckpt"] for p in tmp_path.glob("outputs/eval/*/*/metrics.json")}
    assert str(tmp_path / "own.pt") in scored and not {str(path) for path, _ in crafted.values()} & scored
