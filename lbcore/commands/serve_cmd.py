"""``lb serve``: the local web page for protecting photos (see :mod:`lbcore.apps.web`)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click

from lbcore.commands.attack_cmd import apply_weights_option


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default is reachable only from this computer; any other "
                   "address lets everyone on that network use the page.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=25.0, show_default=True,
              help="Largest upload per Protect (all its files together), in MB.")
@click.option("--max-files", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most files per Protect.")
@click.option("--max-frames", type=click.IntRange(min=1), default=900, show_default=True,
              help="Longest video accepted, in frames.")
@click.option("--session-ttl", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds of inactivity after which a page's files are deleted.")
@click.option("--extractor", "extractors", multiple=True, metavar="SPEC",
              help="Extractor to attack (repeatable). Default: every installed extractor with weights.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--detector", default="auto", show_default=True, metavar="SPEC", help="Face detector.")
@click.option("--weights", "weights", multiple=True, metavar="NAME=PATH", help="Use this weights file.")
@click.option("--log-requests", is_flag=True, help="Log every request (default: only failures).")
def serve_cmd(host: str, port: int, max_upload_mb: float, max_files: int, max_frames: int, session_ttl: float,
              extractors: tuple[str, ...], device: str, detector: str, weights: tuple[str, ...],
              log_requests: bool) -> None:
    """Start a local web page for protecting photos (and a short video): open the printed address.

    The page uploads photos to this server only, runs the same protection as `lb protect`, and
    shows each photo before and after with the landmarks drawn, the report in plain words and
    a download button. Uploads live in a private temporary folder that is deleted when the page
    is closed, after --session-ttl seconds idle, and when the server stops (Ctrl+C).
    """
    from lbcore.errors import SpecError, need_extra

    need_extra("flask", "web", "lb serve")
    from lbcore.apps.web import create_app, is_loopback, make_server

    apply_weights_option(weights)
    logging.basicConfig(level=logging.INFO, format="lb serve: %(message)s")
    loopback = is_loopback(host)
    if not loopback:
        warning = (f"WARNING: listening on {host}: anyone who can reach this computer on that network can use "
                   "the page and upload files to it. Use the default --host 127.0.0.1 to keep it private.")
        click.echo(warning, err=True)  # once: the log goes to the same terminal
    options: dict[str, Any] = {"device": device, "detector": detector}
    if extractors:
        options["extractors"] = tuple(extractors)
    app = create_app(protect_options=options, max_upload_mb=max_upload_mb, max_files=max_files,
                     max_frames=max_frames, loopback_only=loopback, session_ttl_s=session_ttl)
    store = app.extensions["lb_store"]
    try:
        server = make_server(app, host, port, log_requests=log_requests)
    except OSError as err:
        store.close()
        raise SpecError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Landmark Breaker page: http://{shown}:{server.port}/  (Ctrl+C to stop)", err=False)
    sys.stdout.flush()

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # a plain kill also deletes the uploads
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
        click.echo("stopped; uploaded and protected files deleted", err=True)


COMMANDS = [serve_cmd]
