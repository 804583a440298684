"""``lb weights list|inspect|download``: known checkpoints, strict inspection, fetching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lbcore.errors import SpecError, WeightsError


@click.group("weights")
def weights() -> None:
    """Known checkpoints: where they are published, whether you have them, and checks."""


def _entries() -> list[tuple[Any, Any, str]]:
    """(component, WeightsFile, role) for every weights file any extractor declares."""
    from lbcore.plugins import get_plugin_manager

    out = []
    for comp in get_plugin_manager().components("extractors").values():
        for w in comp.metadata.get("weights", []) or []:
            out.append((comp, w, "published"))
        for w in comp.metadata.get("demo_weights", []) or []:
            out.append((comp, w, "demo"))
    return out


@weights.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_weights(as_json: bool) -> None:
    """List known weights files, what they fit, and where (or whether) you have them."""
    from lbcore.weights import resolve_weights

    rows = []
    for comp, w, role in _entries():
        try:
            where: str | None = str(resolve_weights(w))
        except WeightsError:
            where = None
        rows.append({"name": w.name, "extractor": comp.name, "fits": w.fits, "file": w.filename,
                     "role": role, "url": w.url, "sha256": w.sha256, "licence": w.licence,
                     "note": w.note, "found": where})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        status = f"found: {r['found']}" if r["found"] else "missing"
        label = " [demonstration model]" if r["role"] == "demo" else ""
        click.echo(f"{r['name']}{label}  fits {r['fits']}  ({r['file']}, {r['licence']})  {status}")
        if r["note"]:
            click.echo(f"    {r['note']}")
        if not r["found"] and r["url"]:
            click.echo(f"    published at {r['url']}")


def describe_checkpoint(path: Path, allow: dict[str, type] | None = None) -> dict[str, Any]:
    """Format facts about a checkpoint file (without building any network)."""
    import zipfile

    from lbcore.weights import load_checkpoint

    obj = load_checkpoint(path, allow=allow)
    info: dict[str, Any] = {"file": str(path)}
    if path.suffix == ".safetensors":
        info["format"] = "safetensors"
    else:
        info["format"] = "torch zip" if zipfile.is_zipfile(path) else "torch legacy pickle"
    sd = obj
    if isinstance(obj, dict) and "state_dict" in obj:
        info["wrapped"] = sorted(k for k in obj if isinstance(k, str))
        sd = obj["state_dict"]
    keys = [k for k in sd if isinstance(k, str)] if isinstance(sd, dict) else []
    info["keys"] = len(keys)
    info["module_prefix"] = bool(keys) and all(k.startswith("module.") for k in keys)
    info["num_batches_tracked"] = any(k.endswith("num_batches_tracked") for k in keys)
    return info


@weights.command("inspect")
@click.argument("spec")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect_weights(spec: str, path: Path, as_json: bool) -> None:
    """Load PATH strictly into the extractor SPEC; print what matched, or exactly what did not."""
    from lbcore.plugins import get_plugin_manager
    from lbcore.spec import format_spec, parse_spec

    name, params = parse_spec(spec)
    if "weights" in params:
        raise SpecError("give the file as PATH, not as weights= in the spec")
    pm = get_plugin_manager()
    comp = pm.get("extractors", name)
    info = describe_checkpoint(path, comp.metadata.get("pickle_allow"))
    try:
        ext = pm.build("extractors", format_spec(name, {**params, "weights": str(path)}))
    except WeightsError as err:
        mismatch = getattr(err, "mismatch", None)
        if mismatch:  # the exact lists, one per line, before the one-line error
            if as_json:
                click.echo(json.dumps({**info, "spec": spec, "strict": False, **mismatch}, indent=2))
            else:
                for what, items in mismatch.items():
                    for item in items:
                        click.echo(f"{what}: {item}")
        raise
    n_params = sum(int(p.numel()) for p in ext.parameters())
    n_state = len(ext.state_dict())
    info.update({"spec": spec, "extractor": name, "model_keys": n_state, "parameters": n_params,
                 "points": ext.scheme.num_points, "scheme": ext.scheme.name, "strict": True})
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    variant = info["format"]
    if info.get("wrapped"):
        variant += f", wrapped {{{', '.join(repr(k) for k in info['wrapped'])}}}"
    if info["module_prefix"]:
        variant += ", 'module.' prefixes"
    if not info["num_batches_tracked"] and any(k.endswith("num_batches_tracked") for k in ext.state_dict()):
        variant += ", no num_batches_tracked (pre-0.4.1 layout)"
    click.echo(f"{path}: loads strictly into {spec}")
    click.echo(f"  matched keys: {info['keys']} of {n_state} model keys")
    click.echo(f"  parameters:   {n_params:,}")
    click.echo(f"  variant:      {variant}")
    click.echo(f"  landmarks:    {ext.scheme.num_points} ({ext.scheme.name})")


@weights.command("download")
@click.argument("name")
@click.option("--to", "dest", type=click.Path(path_type=Path), default=None,
              help="Folder to put the file in (default: the user cache folder).")
@click.option("-q", "--quiet", is_flag=True)
def download_weights(name: str, dest: Path | None, quiet: bool) -> None:
    """Download the weights file NAME (when it has a direct URL): resumable, sha256-checked."""
    from lbcore.weights import cache_dir, download

    matches = [w for _, w, _ in _entries() if w.name == name]
    if not matches:
        known = ", ".join(sorted({w.name for _, w, _ in _entries()})) or "none"
        raise SpecError(f"unknown weights {name!r} (known: {known})")
    path = download(matches[0], dest or cache_dir(), progress=not quiet)
    click.echo(str(path))


COMMANDS = [weights]
