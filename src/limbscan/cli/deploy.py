"""A bundle and its uses: ``limbscan export`` packages a trained run; ``predict`` scores files
with it, ``serve`` answers HTTP, ``listen`` runs as a DICOM node.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from limbscan.cli import render
from limbscan.cli.options import (
    BundleArg,
    DefaultCvOpt,
    ExportGateOpt,
    GateOpt,
    HostOpt,
    Localiser,
    LocaliserOpt,
    Quiet,
    ScenarioOpt,
    Studies,
    StudiesOpt,
    TargetSensitivityOpt,
    comma_list,
    value,
)
from limbscan.errors import LimbscanError
from limbscan.operating_points import SUSPECTED_SENSITIVITY

verbs = typer.Typer()
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# -- predict ------------------------------------------------------------------------------
@verbs.command("predict")
def predict_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: predictions.jsonl, worklist.csv, overlays/.")],
    bundle: BundleArg = None,
    paths: Annotated[Optional[list[str]], typer.Argument(
        help="Image files, folders (searched recursively) or glob patterns.", show_default=False)] = None,
    scenario: ScenarioOpt = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per forward pass (1 is fastest on a CPU; raise it on a GPU).")
    ] = 1,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Draw overlays/<n>.png.")] = True,
    gradcam: Annotated[bool, typer.Option("--gradcam", help="Blend a Grad-CAM heatmap into each overlay.")] = False,
    dicom_out: Annotated[
        Optional[str], typer.Option("--dicom-out", help="For DICOM inputs: sc, sr or sc,sr (into OUT/dicom/).")
    ] = None,
    gate: GateOpt = True,
    studies: StudiesOpt = Studies.file,
    quiet: Quiet = False,
) -> None:
    """Score radiographs with a bundle and write a triage worklist, most likely abnormal first.

    Without a bundle (the first argument is an image, a folder or a pattern) the shipped model scores them."""
    import os

    from limbscan.predict import run_predict

    bundle, paths = _bundle_and_inputs(bundle, paths or [])
    kinds = [k for k in (dicom_out or "").split(",") if k.strip()]
    summary = run_predict(bundle, paths, out, scenario=value(scenario), batch_size=batch_size, overlays=overlays,
                          gradcam=gradcam, dicom_out=kinds, progress=not quiet, gate=gate, studies=value(studies))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one table
        render.predicted(summary, out, gate=gate, overlays=overlays)
    if summary.n_scored == 0:
        raise typer.Exit(1)


def _bundle_and_inputs(first: Path | None, paths: list[str]) -> tuple[Path | None, list[str]]:
    """(the bundle, the inputs): ``first`` is the bundle when it is one, else the first input (and
    the bundle None: the shipped model)."""
    from limbscan.bundle.manifest import is_bundle

    if first is not None and not is_bundle(first):
        if first.suffix == ".limbscan":
            raise typer.BadParameter(f"{first}: not a bundle (no bundle.json there)", param_hint="BUNDLE")
        first, paths = None, [str(first), *paths]
    if not paths:
        raise typer.BadParameter("no images given: name files, folders or patterns after the bundle",
                                 param_hint="PATHS")
    return first, paths


def _bundle(bundle: Path | None) -> Path:
    from limbscan.pretrained import shipped_bundle

    return bundle if bundle is not None else shipped_bundle()


# -- serve --------------------------------------------------------------------------------
@verbs.command("serve")
def serve_cmd(
    bundle: BundleArg = None,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(envvar="LIMBSCAN_TOKEN", show_envvar=True,
                     help="Bearer token every /v1 call except health must carry (the env var keeps it out of `ps`)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest request body accepted, MiB.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Images predicted at the same time.")] = 2,
    workdir: Annotated[
        Optional[Path], typer.Option(help="Folder for uploads (deleted once predicted) and overlays (default: a temp folder).")
    ] = None,
    node: Annotated[Optional[Path], typer.Option(
        "--node", help="Also show the live worklist of the DICOM node writing into this folder (`limbscan listen -o`).")
    ] = None,
    gate: GateOpt = True,
) -> None:
    """Serve BUNDLE: a REST API (/v1/predict, docs at /docs) and a worklist web page at /."""
    import ipaddress

    import uvicorn

    from limbscan.serve import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        render.open_port(host, port)
    # The service logs one line per request (id, route, status, time); uvicorn's access log would repeat it.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    bundle = _bundle(bundle)
    service = create_app(bundle, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_concurrency=concurrency, workdir=workdir, node=node, gate=gate)
    render.serving(bundle, host, port)
    uvicorn.run(service, host=host, port=port, access_log=False, log_level="info")


# -- listen -------------------------------------------------------------------------------
LISTEN_HELP = (
    "Run as a DICOM node: receive radiographs by C-STORE, score them, send the SR and SC back.\n\n"
    "A Storage SCP for CR, DX (for presentation and for processing) and Secondary Capture images, in every "
    "transfer syntax the reader decodes, answering C-ECHO too; only calling AE titles named with --allow may "
    "associate. Each object is stored in OUT/received before its C-STORE is answered, then scored by one worker "
    "into OUT/predictions.jsonl, worklist.csv and errors.jsonl (as `predict` writes them); the SR and SC "
    "(OUT/dicom) go to every --forward and --stow destination as new series of the source's study, through an "
    "outbox on disk retried with back-off. Stopping (Ctrl+C) or a crash loses nothing: the same command resumes "
    "the queue and the outbox. --http-port also serves the web page, whose worklist shows what arrives."
)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@verbs.command("listen", help=LISTEN_HELP)
def listen_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Node folder: queue, outbox, results (reused on restart).")],
    allow: Annotated[list[str], typer.Option(
        "--allow", help="A calling AE title allowed to associate (the PACS', the modality's); repeat for several.")],
    bundle: BundleArg = None,
    aet: Annotated[str, typer.Option("--aet", help="This node's AE title.")] = "LIMBSCAN",
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="DICOM port.")] = 11112,
    forward: Annotated[Optional[list[str]], typer.Option(
        "--forward", help="Send the SR and SC by C-STORE to AE@host:port (e.g. ORTHANC@pacs:4242); repeatable.")
    ] = None,
    stow: Annotated[Optional[list[str]], typer.Option(
        "--stow", help="Send the SR and SC by STOW-RS to this DICOMweb root (e.g. http://pacs:8042/dicom-web); "
                       "repeatable.")] = None,
    stow_token: Annotated[Optional[str], typer.Option(
        envvar="LIMBSCAN_STOW_TOKEN", show_envvar=True, help="Bearer token for the STOW-RS server.")] = None,
    scenario: ScenarioOpt = None,
    dicom_out: Annotated[str, typer.Option("--dicom-out", help="DICOM outputs made and sent: sc, sr or sc,sr.")
                         ] = "sc,sr",
    keep_received: Annotated[bool, typer.Option(
        "--keep-received", help="Keep each received object (OUT/kept) once scored, instead of deleting it.")] = False,
    max_associations: Annotated[int, typer.Option(help="Associations served at the same time.")] = 32,
    retry_max: Annotated[float, typer.Option(
        help="Longest wait, in seconds, between tries to reach a destination that is down (back-off 1, 2, 4... s).")
    ] = 60.0,
    http_port: Annotated[Optional[int], typer.Option(
        "--http-port", help="Also serve the web page and REST API (as `serve`) on this port, showing the node's "
                            "live worklist.")] = None,
    http_host: Annotated[str, typer.Option(help="Address of the web page (with --http-port).")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option(
        envvar="LIMBSCAN_TOKEN", show_envvar=True, help="Bearer token for the web page's /v1 calls (--http-port).")
    ] = None,
    gate: GateOpt = True,
) -> None:
    import signal

    from limbscan.node import Node, NodeConfig, parse_forward, parse_stow

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # pynetdicom's own INFO lines repeat ours; its warnings and errors still show.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    kinds = tuple(k.strip().lower() for k in dicom_out.split(",") if k.strip())
    destinations = [parse_forward(f) for f in forward or []] + [parse_stow(u) for u in stow or []]
    allowed = [a.strip() for a in allow if a.strip()]
    if not allowed:
        raise LimbscanError("--allow: name at least one calling AE title (the PACS' or the modality's)")
    config = NodeConfig(out=out, allowed=allowed, ae_title=aet, host=host, port=port, forward=destinations,
                        scenario=value(scenario), dicom_out=kinds, keep_received=keep_received,
                        max_associations=max_associations, retry_max=retry_max, stow_token=stow_token, gate=gate)
    node = Node(_bundle(bundle), config)
    # SIGTERM (a service manager's stop) ends like Ctrl+C: the object in hand finished, the rest left queued.
    signal.signal(signal.SIGTERM, _interrupt)
    node.start()
    render.listening(aet, host, node.port, out)
    if http_port is None:
        node.serve_forever()
        return
    from limbscan.serve import background_server, create_app

    web = create_app(node.model, token=token, node=out, decode_lock=node.decode_lock, gate=gate)
    with background_server(web, host=http_host, port=http_port, log_level="warning") as base:
        render.node_page(base)
        node.serve_forever()


# -- export -------------------------------------------------------------------------------
@verbs.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A trained run folder (from `limbscan train`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write, e.g. model.limbscan.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write ONNX models (checked against PyTorch).")] = False,
    target_sensitivity: TargetSensitivityOpt = None,
    suspected_sensitivity: Annotated[
        float, typer.Option(help="High-sensitivity ('suspected') point: reach this sensitivity on validation.")
    ] = SUSPECTED_SENSITIVITY,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at OUT.")] = False,
    default_from_cv: DefaultCvOpt = None,
    gate: ExportGateOpt = "builtin",
    localiser: LocaliserOpt = Localiser.auto,
    scenario: Annotated[Optional[str], typer.Option(
        "--scenario", help="The trained scenarios to include, a comma list (default: all; each brings what it needs).")
    ] = None,
    half: Annotated[bool, typer.Option("--half", help="Store the weights in half precision (half the size).")] = False,
    model_card: Annotated[Optional[Path], typer.Option(
        "--model-card", help="A markdown model card to carry (model-card.md in the bundle).")] = None,
    quiet: Quiet = False,
) -> None:
    """Package a trained run as a bundle: weights, config, validation thresholds, input gate, checksums."""
    from limbscan.bundle import export_bundle, read_manifest

    path = export_bundle(run, out, target_sensitivity=target_sensitivity, suspected_sensitivity=suspected_sensitivity,
                         onnx=onnx, progress=not quiet, overwrite=overwrite, default_from_cv_dir=default_from_cv,
                         gate=None if gate == "none" else gate, localiser=value(localiser),
                         scenarios=comma_list(scenario), half=half, model_card=model_card)
    render.exported(path, read_manifest(path, verify=False))
