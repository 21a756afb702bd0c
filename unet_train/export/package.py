"""Build, zip, validate and test a bioimage.io package with bioimageio.spec and bioimageio.core, offline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class PackageInvalid(RuntimeError):
    """The package description does not validate (a bug in the exporter, not a user error)."""


def save_package(rdf: dict[str, Any], folder: Path, zip_path: Path) -> Path:
    """Validate ``rdf`` (relative to ``folder``) and write the zip (``rdf.yaml`` + every file it names)."""
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description, save_bioimageio_package

    with ValidationContext(root=folder, perform_io_checks=True):
        descr = build_description(rdf)
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.errors
        first = errors[0] if errors else "no details"
        raise PackageInvalid(f"the bioimage.io description does not validate: {first}")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    zip_path.unlink(missing_ok=True)
    return Path(save_bioimageio_package(descr, output_path=zip_path))


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
