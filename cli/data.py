"""``starrating data prepare``: files (or the embedded default) to train/validation/test splits."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.app import app, console, fail, needs_extra
from starrating.labels import STARS
from starrating.settings import CoreSettings

data_app = typer.Typer(help="Prepare review data for training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@needs_extra("train")
def prepare_command(
    out: Path = typer.Option(..., "--out", help="Directory for train/validation/test .jsonl."),
    source: str = typer.Option(
        "default",
        "--source",
        help="'default' (embedded Amazon review sentences), a file path (Amazon TSV, Amazon "
        "2023 JSONL, CSV/JSONL/Parquet; gzip or not) or hf:DATASET_ID.",
    ),
    text_col: str | None = typer.Option(None, help="Text column of a generic CSV/JSONL/Parquet."),
    label_col: str | None = typer.Option(None, help="1-5 star column of a generic file."),
    seed: int = typer.Option(42, help="Seed of the stratified split."),
    validation_fraction: float = typer.Option(0.1, help="Share of rows for validation."),
    test_fraction: float = typer.Option(0.1, help="Share of rows for test."),
    with_extra_corpora: bool = typer.Option(
        False,
        "--with-extra-corpora",
        help="With --source default: also train on the archive's other rated corpora (movie-"
        "review snippets, tweets, New York Times editorial snippets; same raters' protocol and "
        "cut points). They go to the training split only: validation and test stay the Amazon "
        "sentences, split exactly as without this option.",
    ),
    extra_corpora_ratio: float | None = typer.Option(
        None,
        "--extra-corpora-ratio",
        help="With --with-extra-corpora: keep only a random sample (by --seed) of R x the "
        "Amazon training rows from the extra corpora, e.g. 1 for as many as Amazon has "
        "(all of them where there are fewer). Default: all of them.",
        metavar="R",
    ),
) -> None:
    """Validate rows (missing text and labels outside 1-5 are counted, not fatal) and write
    stratified splits plus summary.json."""
    import itertools

    from training.data.embedded import AMAZON, EXTRA_CORPORA, EmbeddedDataError, read_corpus
    from training.data.prepare import SPLITS, prepare
    from training.data.readers import DataFormatError, read_reviews

    if with_extra_corpora and source != "default":
        raise fail("--with-extra-corpora adds the embedded archive's corpora: use --source default")
    if extra_corpora_ratio is not None and not with_extra_corpora:
        raise fail("--extra-corpora-ratio samples the extra corpora: add --with-extra-corpora")
    cache_dir = CoreSettings().cache_dir
    if source == "default":
        reviews = read_corpus(cache_dir, AMAZON)
    else:
        reviews = read_reviews(source, text_col=text_col, label_col=label_col)
    extra = (
        itertools.chain.from_iterable(read_corpus(cache_dir, c) for c in EXTRA_CORPORA)
        if with_extra_corpora
        else iter(())
    )
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task(f"reading {source}", total=None)
            summary = prepare(
                reviews,
                out,
                source=source,
                seed=seed,
                validation_fraction=validation_fraction,
                test_fraction=test_fraction,
                on_row=lambda: progress.advance(task),
                extra_train=extra,
                extra_ratio=extra_corpora_ratio,
            )
    except (DataFormatError, EmbeddedDataError, ValueError) as exc:
        raise fail(str(exc)) from exc

    table = Table(title=f"{summary.rows_written:,} reviews from {source} → {out}")
    table.add_column("split")
    for star in STARS:
        table.add_column(f"{star}★", justify="right")
    table.add_column("rows", justify="right")
    for name in SPLITS:
        counts = summary.splits[name]
        table.add_row(name, *(f"{counts[str(s)]:,}" for s in STARS), f"{counts['rows']:,}")
    console.print(table)
    if len(summary.sources) > 1:
        console.print(
            "by source: "
            + "; ".join(
                f"{name} " + ", ".join(f"{split} {n:,}" for split, n in splits.items())
                for name, splits in summary.sources.items()
            )
        )
    skipped = summary.skipped
    console.print(
        f"read {summary.rows_read:,} rows; skipped {skipped['missing_text']:,} without text "
        f"and {skipped['bad_label']:,} with a label outside 1-5. Summary: {out / 'summary.json'}"
    )
    if summary.rows_written == 0:
        raise fail("no usable rows: check --text-col/--label-col and the file's contents")
