"""``limbscan data ...``: import, draw, split, inspect, cache and download datasets; and
``limbscan anonymize``, which de-identifies DICOM before it becomes a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from limbscan.cli import render
from limbscan.cli.options import CacheConfigOpt, DatasetArg, OutDir, Quiet, SplitConfigOpt, comma_list, load_settings
from limbscan.errors import LimbscanError

app = typer.Typer(help="Build, split, inspect and cache datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import a dataset into limbscan's schema (COCO JSON + image fields).", no_args_is_help=True)
download_app = typer.Typer(help="Fetch public datasets (needs internet).", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(download_app, name="download")
verbs = typer.Typer()  # top-level verbs: `limbscan anonymize`


def _finish_import(result, out: Path) -> None:
    """Print what an importer did, keep its skip list beside the dataset."""
    from limbscan.data.stats import stats_table
    from limbscan.utils.files import write_json_atomic

    ds = result.dataset
    write_json_atomic(
        out / "import_report.json",
        {
            "skipped": [vars(s) for s in result.skipped],
            "warnings": [vars(s) for s in result.warnings],
            "n_images": len(ds.images),
            "n_annotations": len(ds.coco["annotations"]),
        },
    )
    render.skipped(result.skipped, result.warnings)
    render.imported(stats_table(ds), out, len(ds.images), len(ds.coco["annotations"]))


# -- data import --------------------------------------------------------------------------
@import_app.command("fracatlas")
def import_fracatlas_cmd(
    root: Annotated[Path, typer.Argument(help="FracAtlas root (holds dataset.csv, images/, Annotations/).")],
    out: OutDir,
    skip_truncated: Annotated[bool, typer.Option(help="Skip truncated JPEGs instead of keeping what decodes.")] = False,
    parts: Annotated[Optional[str], typer.Option(
        help="Keep only these body parts, a comma list of leg, hip, hand, shoulder, mixed, unknown "
             "(leg,hip: the main lower-limb dataset).")] = None,
    exclude_parts: Annotated[Optional[str], typer.Option(
        help="Keep all but these body parts (leg,hip: the rest, as auxiliary training data).")] = None,
    quiet: Quiet = False,
) -> None:
    """Import FracAtlas as laid out by its authors: label from the folder, tags from dataset.csv, lesions from COCO."""
    from limbscan.data.importers import import_fracatlas

    result = import_fracatlas(root, out, progress=not quiet, skip_truncated=skip_truncated,
                              parts=comma_list(parts), exclude_parts=comma_list(exclude_parts))
    _finish_import(result, out)


@import_app.command("folder")
def import_folder_cmd(
    root: Annotated[Path, typer.Argument(help="ROOT/<body_part>/{normal,abnormal}/... of DICOM, PNG or JPEG.")],
    out: OutDir,
    quiet: Quiet = False,
) -> None:
    """Import a folder tree ROOT/<body_part>/{normal,abnormal}/...; DICOM files are anonymised into DS/images."""
    from limbscan.data.importers import import_folder

    _finish_import(import_folder(root, out, progress=not quiet), out)


@import_app.command("coco")
def import_coco_cmd(
    annotations: Annotated[Path, typer.Argument(help="COCO JSON file; its annotations are lesions.")],
    images: Annotated[Path, typer.Option("--images", help="Folder the COCO file names are relative to.")],
    out: OutDir,
    quiet: Quiet = False,
) -> None:
    """Import a COCO JSON and its image folder."""
    from limbscan.data.importers import import_coco

    _finish_import(import_coco(annotations, images, out, progress=not quiet), out)


@import_app.command("mura")
def import_mura_cmd(
    root: Annotated[Path, typer.Argument(help="MURA/LERA-style tree: .../XR_<PART>/<patient>/<study>_positive|_negative/.")],
    out: OutDir,
    all_parts: Annotated[bool, typer.Option(help="Keep upper-limb studies too.")] = False,
    quiet: Quiet = False,
) -> None:
    """Import MURA / LERA study folders (label from the _positive / _negative suffix)."""
    from limbscan.data.importers import import_mura

    _finish_import(import_mura(root, out, progress=not quiet, lower_limb_only=not all_parts), out)


@import_app.command("yolo")
def import_yolo_cmd(
    root: Annotated[Path, typer.Argument(
        help="YOLOv8 / Roboflow export: data.yaml and <split>/images/, <split>/labels/ (or images/, labels/).")],
    out: OutDir,
    normal: Annotated[Optional[str], typer.Option(
        help="Classes of a normal region, a comma list (default: every class whose name holds the word "
             "'normal'; with --abnormal alone, the rest).")] = None,
    abnormal: Annotated[Optional[str], typer.Option(
        help="Classes that make an image abnormal, each region a lesion, a comma list (default: the rest).")] = None,
    body_part: Annotated[Optional[str], typer.Option(
        help="Body part of every image (e.g. hip); default unknown.")] = None,
    quiet: Quiet = False,
) -> None:
    """Import a YOLOv8 / Roboflow export: an image is abnormal when any region is of an abnormal class."""
    from limbscan.data.importers import import_yolo

    result = import_yolo(root, out, normal=comma_list(normal), abnormal=comma_list(abnormal),
                         body_part=body_part, progress=not quiet)
    _finish_import(result, out)


# -- data ---------------------------------------------------------------------------------
@app.command("synth")
def synth_cmd(
    out: OutDir,
    n: Annotated[int, typer.Option("-n", help="Number of phantom images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    abnormal_fraction: Annotated[float, typer.Option(help="Share of phantoms with a fracture.")] = 0.3,
    fracture_width: Annotated[
        float, typer.Option(help="Scale of the fracture gap: 1 = a 1-3 px hairline; 3 = easy, for short demos.")
    ] = 1.0,
    quiet: Quiet = False,
) -> None:
    """Draw SYNTHETIC long-bone phantoms (PNG and DICOM) for tests and offline demos; not radiographs."""
    from limbscan.data.synth import synthesize

    ds = synthesize(out, n=n, seed=seed, abnormal_fraction=abnormal_fraction, progress=not quiet,
                    fracture_width=fracture_width)
    render.synthesized(out, len(ds.images), sum(im["label"] for im in ds.images))


@app.command("split")
def split_cmd(
    dataset: DatasetArg,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: the config's, 0).")] = None,
    config: SplitConfigOpt = None,
) -> None:
    """Split 70/10/20 by patient, stratified by body part x label; deterministic for a seed."""
    from limbscan.data.dataset import Dataset
    from limbscan.data.split import split_dataset
    from limbscan.data.stats import stats_table

    cfg = load_settings(config).data.split
    if seed is not None:
        cfg.seed = seed
    ds = split_dataset(Dataset.load(dataset), cfg)
    path = ds.save()
    render.split_saved(stats_table(ds), path, cfg.seed)


@app.command("stats")
def stats_cmd(
    dataset: DatasetArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write a Markdown report here.")] = None,
) -> None:
    """Count images per body part x label x split."""
    from limbscan.data.dataset import Dataset
    from limbscan.data.stats import stats_markdown, stats_table

    stats = stats_table(Dataset.load(dataset))
    render.dataset_stats(stats, as_json=as_json)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(stats_markdown(stats, title=f"Dataset {dataset.name}"))
        render.wrote(markdown)


@app.command("cache")
def cache_cmd(
    dataset: DatasetArg,
    longest_side: Annotated[Optional[int], typer.Option(help="Longest side of cached images (default: config).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: config).")] = None,
    config: CacheConfigOpt = None,
    quiet: Quiet = False,
) -> None:
    """Decode every image once, resize it and store it; reruns only do what is missing or changed."""
    from limbscan.data.cache import build_cache
    from limbscan.data.dataset import Dataset

    cfg = load_settings(config).data.cache
    report = build_cache(
        Dataset.load(dataset),
        longest_side=longest_side or cfg.longest_side,
        workers=workers or cfg.workers,
        progress=not quiet,
    )
    render.cached(report)
    if report.n_total and len(report.skipped) == report.n_total:
        raise LimbscanError(f"{dataset}: no image could be cached")


@download_app.command("fracatlas")
def download_fracatlas_cmd(
    dest: Annotated[Path, typer.Argument(help="Folder to download and unpack into.")],
    quiet: Quiet = False,
) -> None:
    """Download FracAtlas (CC BY 4.0) from figshare, resumably, check it and unpack it."""
    from limbscan.data.download import download_fracatlas

    render.downloaded(download_fracatlas(dest, progress=not quiet))


# -- anonymize ----------------------------------------------------------------------------
@verbs.command("anonymize")
def anonymize_cmd(
    src: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    quiet: Quiet = False,
) -> None:
    """De-identify DICOM with the PS3.15 basic profile (UIDs replaced consistently within the run)."""
    from limbscan.io.anonymize import anonymize_tree

    written, skipped = anonymize_tree(src, out, progress=not quiet)
    render.anonymized(written, skipped, out)
    if not written:
        raise LimbscanError(f"{src}: no DICOM file could be anonymised")
