"""``edgeseg models``: the network architectures and the zoo."""

from __future__ import annotations

import json

import click

from .common import json_flag, user_errors


@click.command()
@json_flag("Print a JSON list instead of a table.")
@user_errors
def models(as_json: bool) -> None:
    """List the network architectures and the models shipped in the zoo.

    \b
    Example:
      edgeseg models --json
    """
    from edgeseg.zoo import Zoo

    try:
        from edgeseg.train.models import architecture_rows
    except ModuleNotFoundError:  # torch-free install: the zoo cards still say everything
        rows = []
    else:
        rows = architecture_rows()
    rows += [ref.row() for ref in Zoo().entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max([28, *(len(r["name"]) + 2 for r in rows)])  # the longest file name still leaves a gap
    click.echo(f"{'name':<{width}}{'kind':<14}{'format':<10}{'params':>12}{'GFLOPs':>9}  test Dice")
    for r in rows:
        dice = f"{r['dice']:.4f}" if r.get("dice") is not None else ""
        params = f"{r['params'] / 1e6:.3f} M" if r.get("params") else ""
        gf = f"{r['gflops']:.3f}" if r.get("gflops") is not None else ""
        click.echo(f"{r['name']:<{width}}{r['kind']:<14}{r.get('format', '') or '':<10}{params:>12}{gf:>9}  {dice}")
