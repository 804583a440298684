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
    """List known weights files, what they fit, where (or whether) you have them, and which ones
    `lb protect` uses by default (every published file present; demo models only without one)."""
    from lbcore.apps.protection import plan_default_ensemble
    from lbcore.spec import parse_spec
    from lbcore.weights import resolve_weights

    plan = plan_default_ensemble()
    by_default = {m.weights for m in plan if m.weights and not m.demo}
    present = {parse_spec(m.spec)[0] for m in plan if not m.demo and not m.missing}
    demo_for = {m.label: m.family for m in plan if m.demo}
    rows = []
    for comp, w, role in _entries():
        try:
            where: str | None = str(resolve_weights(w))
        except WeightsError:
            where = None
        if role == "published":
            default = bool(where) and w.name in by_default
        else:  # a demo joins unless published weights of its own network are present
            fam = demo_for.get(comp.name, "")
            default = bool(where) and comp.name in demo_for and not (fam in present if fam else present)
        rows.append({"name": w.name, "extractor": comp.name, "fits": w.fits, "file": w.filename,
                     "role": role, "url": w.url, "sha256": w.sha256, "licence": w.licence,
                     "note": w.note, "found": where, "protect_default": default})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        status = f"found: {r['found']}" if r["found"] else "missing"
        label = " [demonstration model]" if r["role"] == "demo" else ""
        used = "  [used by lb protect]" if r["protect_default"] else ""
        click.echo(f"{r['name']}{label}  fits {r['fits']}  ({r['file']}, {r['licence']})  {status}{used}")
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
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every known file that has a direct URL.")
@click.option("--to", "dest", type=click.Path(path_type=Path), default=None,
              help="Folder to put the files in (default: the user cache folder).")
@click.option("-q", "--quiet", is_flag=True)
def download_weights(names: tuple[str, ...], all_: bool, dest: Path | None, quiet: bool) -> None:
    """Download the weights files NAMES (or --all that have a direct URL): resumable,
    sha256-checked. Prints each file's path; files already complete are not fetched again."""
    from lbcore.weights import cache_dir, download

    entries = {w.name: w for _, w, _ in _entries()}
    if all_ == bool(names):
        raise SpecError("give weights NAMES or --all (not both); see `lb weights list`")
    if all_:
        chosen = [w for w in entries.values() if w.url]
    else:
        unknown = [n for n in names if n not in entries]
        if unknown:
            raise SpecError(f"unknown weights {unknown[0]!r} (known: {', '.join(sorted(entries)) or 'none'})")
        chosen = [entries[n] for n in dict.fromkeys(names)]
    for entry in chosen:
        path = download(entry, dest or cache_dir(), progress=not quiet)
        click.echo(str(path))


COMMANDS = [weights]
