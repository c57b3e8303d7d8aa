"""``scopert package MODEL.onnx -o NAME.zip``: a bioimage.io model package (format 0.5) of a ScopeRT model.

A separate command rather than an ``export`` option: it packages any ScopeRT ONNX (exported, imported or
FP16-free), needs a real sample image and the ``bioimageio`` extra, and runs bioimageio.core's test_model
before writing. Thin: parses options and calls ``scopert.export.bioimageio.package.package_model``.
"""

from __future__ import annotations

import click


@click.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("-o", "--output", "out_path", required=True, type=click.Path(), help="The package to write (.zip).")
@click.option("--sample", type=click.Path(exists=True),
              help="A real raw image for the test tensors and the cover (default: the run's training data).")
@click.option("--name", help="Package name (default: 'ScopeRT FAMILY MODEL').")
@click.option("--description", help="One-line description (default: family, task and how it was verified).")
@click.option("--author", "authors", multiple=True, help="An author (repeat for several; default: your login).")
@click.option("--license", "license_id", default="CC-BY-4.0", show_default=True, help="SPDX license of the weights.")
@click.option("--cite-text", help="A citation of your own work (the family's seed paper is always cited).")
@click.option("--cite-doi", help="Its DOI.")
@click.option("--tag", "tags", multiple=True, help="Extra tags.")
def package(model_path, out_path, sample, name, description, authors, license_id, cite_text, cite_doi, tags) -> None:
    """Write a bioimage.io package (Fiji/deepImageJ, ilastik, napari, bioimageio.core) of MODEL.onnx."""
    from scopert.export.bioimageio.package import PackageOptions, package_model

    options = PackageOptions(name=name, description=description, authors=authors, license=license_id,
                             cite_text=cite_text, cite_doi=cite_doi, tags=tags)
    result = package_model(model_path, out_path, sample, options)
    click.echo(f"{result.path}: bioimageio.spec load_description {result.status}, bioimageio.core test_model "
               f"{result.test_model}, test tile {result.test_input_shape}", err=True)
    for warning in result.warnings:
        click.echo(f"  note: {warning}", err=True)


command = package
