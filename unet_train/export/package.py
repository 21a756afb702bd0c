"""Build, zip, validate and test a bioimage.io package with bioimageio.spec and bioimageio.core, offline."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from unet_train.errors import ConfigError
from unet_train.safe_io import cleared, write_atomic

log = logging.getLogger(__name__)
# rdf.yaml fields taken from the user's bioimageio.* settings as they are.
USER_KEYS = ("name", "description", "authors", "license", "tags")


class PackageInvalid(RuntimeError):
    """The package description does not validate (a bug in the exporter, not a user error)."""


def save_package(rdf: dict[str, Any], folder: Path, zip_path: Path) -> Path:
    """Validate ``rdf`` (relative to ``folder``) and write the zip (``rdf.yaml`` + every file it names)."""
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description, save_bioimageio_package

    with ValidationContext(root=folder, perform_io_checks=True):
        descr = build_description(rdf)
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.errors
        key = str(errors[0].loc[0]) if errors and errors[0].loc else ""
        if key in USER_KEYS:  # metadata the user gave in bioimageio.*: a config error, not an exporter bug
            raise ConfigError(
                f"bioimageio.{key}={rdf.get(key)!r} is refused by bioimage.io: {errors[0].msg}; "
                f"change bioimageio.{key} (configs/export.yaml)."
            )
        first = errors[0] if errors else "no details"
        raise PackageInvalid(f"the bioimage.io description does not validate: {first}")
    cleared(zip_path)  # bioimageio.spec writes the zip itself: a fresh file, not through a planted link
    saved = Path(save_bioimageio_package(descr, output_path=zip_path))
    write_for_older_readers(saved)
    return saved


# What bioimageio.spec 0.5.9 (ilastik's pin) reads: covers and documentation as plain relative paths.
# Readers from 0.5.11 on convert exactly this form (format_version < 0.5.11) to file entries on loading.
OLDEST_FORMAT_VERSION = "0.5.9"


def write_for_older_readers(zip_path: Path) -> None:
    """Rewrite the zip's ``rdf.yaml`` as format 0.5.9 with plain-string ``covers`` and ``documentation``.

    bioimageio.spec 0.5.12 writes them as ``{source, sha256}`` entries, which 0.5.9 rejects; nothing
    else differs for this package (checked with bioimageio.spec 0.5.9.1 and bioimageio.core 0.11).
    """
    from ruyaml import YAML

    with zipfile.ZipFile(zip_path) as archive:
        rdf = YAML(typ="safe").load(archive.read("rdf.yaml"))
        members = [(info, archive.read(info)) for info in archive.infolist() if info.filename != "rdf.yaml"]
    rdf["format_version"] = OLDEST_FORMAT_VERSION
    rdf["covers"] = [c["source"] if isinstance(c, dict) else c for c in rdf.get("covers", [])]
    if isinstance(rdf.get("documentation"), dict):
        rdf["documentation"] = rdf["documentation"]["source"]
    text, dumper = io.StringIO(), YAML(typ="safe", pure=True)
    dumper.default_flow_style = False
    dumper.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # keep the order written
    dumper.dump(rdf, text)

    def write(handle: BinaryIO) -> None:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for info, data in members:
                archive.writestr(info, data)
            archive.writestr("rdf.yaml", text.getvalue())

    write_atomic(zip_path, write)


def test_package(zip_path: Path, weight_formats: list[str]) -> dict[str, str]:
    """``bioimageio.core.test_model`` for each weight format: ``{format: "passed" | "failed: <first error>"}``."""
    from bioimageio.core import test_model

    results: dict[str, str] = {}
    for weight_format in weight_formats:
        summary = test_model(zip_path, weight_format=weight_format, devices=["cpu"])  # type: ignore[arg-type]
        if summary.status == "passed":
            results[weight_format] = "passed"
        else:
            errors = [d for d in summary.details if d.status != "passed"]
            first = errors[0].errors[0].msg if errors and errors[0].errors else (errors[0].name if errors else "?")
            results[weight_format] = f"failed: {first}"
        log.info("bioimageio test %s (%s): %s", zip_path.name, weight_format, results[weight_format])
    return results
