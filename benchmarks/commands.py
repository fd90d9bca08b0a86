"""``edgekit bench``: light at import (click only); the work is imported inside the command."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit import formats as format_table
from edgekit.cli_options import MAX_THREADS, FiniteFloatRange, FormatNames, bundle_from, model_option, option


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        threads = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not threads or min(threads) < 1 or max(threads) > MAX_THREADS:
        raise click.BadParameter(f"thread counts must be positive integers, at most {MAX_THREADS}")
    return threads


@click.command()
@click.argument("positional_bundle", metavar="[BUNDLE]", required=False, type=click.Path(path_type=Path))
@model_option("The bundle to measure (the same as BUNDLE). Default: the model shipped with edgekit.")
@option("--dataset", "data", aliases=("--data",), type=click.Path(path_type=Path),
        help="Labelled images: a split file (its --part is used) or a folder-per-class dataset. "
             "Default: the split file the bundle was trained from.")
@click.option("--part", default="test", show_default=True, help="Which part of a split file to use.")
@click.option("--threads", callback=_int_list, help="Thread counts, e.g. 1,2,4 (default: the profile's).")
@click.option("--formats", type=FormatNames(format_table.FORMATS), help="Comma-separated formats to measure"
              f" ({format_table.names(format_table.FORMATS)}; default: all in the bundle);"
              " Keras is always measured as the reference (where the train extra is installed).")
@click.option("--profile", default="auto", show_default=True,
              help="Device profile: auto (the detected board, else host), host, rpi4, rpi5, phone.")
@option("--batch-size", "batch", aliases=("--batch",), default=32, show_default=True,
        type=click.IntRange(min=1), help="Batch size for the throughput pass.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1),
              help="Timed batch-1 runs for the latency percentiles.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Output folder. Default: BUNDLE/bench-<profile>, ./bench-<profile> for the shipped one.")
@click.option("--reference", help="Compare with a reference CSV (path or board name); "
              "default: the detected board's, when there is one.")
@click.option("--save-reference", type=click.Path(path_type=Path),
              help="Write this run's ok rows as a reference CSV (after a run on a real board).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--timeout", default=600.0, show_default=True, type=FiniteFloatRange(0, min_open=True),
              help="Seconds allowed per row.")
def bench(positional_bundle: Path | None, bundle: Path | None, data: Path | None, part: str,
          threads: list[int] | None, formats: tuple[format_table.FormatSpec, ...] | None,
          profile: str, batch: int, runs: int, warmup: int,
          out: Path | None, reference: str | None, save_reference: Path | None, no_plots: bool,
          timeout: float) -> None:
    """Benchmark a bundle's formats: speed, memory, accuracy.

    Benchmark every format of a bundle: size, load time, latency, throughput, memory, and cell- and
    patient-level accuracy with 95% CIs, one process per (format, threads) row."""
    from edgekit.benchmarks.bench import run_bench
    from edgekit.benchmarks.profiles import (
        REFERENCE_FIELDS,
        compare_to_reference,
        detect_board,
        load_reference,
        reference_path,
        reference_rows,
    )
    from edgekit.benchmarks.report import markdown_tables, to_csv, write_outputs
    from edgekit.device.runtime import default_bundle_dir
    from edgekit.manifest import atomic_write_text
    from edgekit.safefile import check_output_target

    bundle = bundle_from(positional_bundle, bundle)
    out_root = Path(bundle) if bundle is not None else Path.cwd()  # never write into the installed package
    bundle = bundle or default_bundle_dir()

    # "all" (every row of the table) measures what the bundle holds, like no --formats
    fmt_list = [f.name for f in formats] if formats and formats != format_table.FORMATS else None
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    # what would only fail once every row is measured is checked first: nothing measured is lost
    if out is not None and out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} exists and is not a folder", param_hint="--out")
    ref = load_reference(reference) if reference else None
    if save_reference:
        check_output_target(save_reference, force=True)
    result = run_bench(bundle, data, threads=threads, formats=fmt_list, profile=profile, part=part,
                       batch=batch, runs=runs, warmup=warmup, timeout=timeout, log=log)
    comparisons = None
    board = detect_board()
    source = reference or (board if board and reference_path(board).is_file() else None)
    if source:
        ref = ref if ref is not None else load_reference(source)
        comparisons = compare_to_reference(result["rows"], ref, model=result["meta"]["model"])
        if not ref:
            log(f"reference {source} has no rows yet")
        worse = [c for c in comparisons if c["verdict"] == "worse"]
        log(f"reference {source}: {len(comparisons)} comparisons, {len(worse)} outside the band (worse)")
    target = out or out_root / f"bench-{result['meta']['profile']['name']}"
    paths = write_outputs(result, target, plots=not no_plots, comparisons=comparisons, log=log)
    if save_reference:
        rows = reference_rows(result["rows"], result["meta"]["model"])
        meta = result["meta"]
        header = (f"# model {meta['model']!r} ({meta['bundle']}) on {meta['data']}; {meta['host']['cpu']}, "
                  f"profile {meta['profile']['name']}, {meta['date']}\n")
        atomic_write_text(save_reference, header + to_csv(rows, REFERENCE_FIELDS))
        paths["reference"] = save_reference
    click.echo(markdown_tables(result["rows"]))
    for name, path in paths.items():
        click.echo(f"wrote {name}: {path}", err=True)
    _refuse_nothing_measured(result["rows"], fmt_list)


def _refuse_nothing_measured(rows: list[dict], asked: list[str] | None) -> None:
    """Exit non-zero when no row of what was asked for (the Keras reference aside, unless asked) was
    measured: a run whose every model failed is no benchmark, whatever the tables say."""
    from edgekit.errors import EdgekitError

    mine = [r for r in rows if (r["format"] in asked if asked else r["format"] != "keras")]
    if mine and not any(r.get("status") == "ok" for r in mine):
        names = ", ".join(sorted({r["format"] for r in mine}))
        raise EdgekitError(f"nothing was measured: every row of {names} failed (see 'Rows not ok'); the"
                           " tables above were written")
