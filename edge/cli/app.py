"""The ``edgeseg`` group: global options and the verbs, each defined in the module named for what it works on."""

from __future__ import annotations

import click

from . import bench, bundle, evaluate, export, models, run, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgeseg")
def main(debug: bool) -> None:
    """edgeseg: live nuclei segmentation on the CPU of a microscope's Raspberry Pi or mini-PC.

    \b
    Examples:
      edgeseg run                                  # the shipped clip through shuffle_unet_px-int8, FPS summary
      edgeseg run --source picam --serve 0.0.0.0:8080 --token SECRET
      edgeseg models
      edgeseg bench --json bench.json
      edgeseg eval fast_scnn-int8 --data ../shared/data/dsb2018/stage1_train --split test --json
      edgeseg train fast_scnn --data ../shared/data/dsb2018/stage1_train --out runs/fast_scnn
    """


for command in (models.models, train.train, evaluate.eval_cmd, export.export_cmd, train.demo, train.distill, run.run,
                bundle.bundle_cmd, bundle.install_bundle_cmd, bundle.deploy_cmd, bench.bench_cmd):
    main.add_command(command)
