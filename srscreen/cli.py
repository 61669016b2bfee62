"""The `srscreen` command line: parses options and calls the library; nothing else lives here."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from srscreen.io.atomic_write import replace_when_done
from srscreen.errors import ModelFileError, OptionError, ShardFileError, SrscreenError

if TYPE_CHECKING:
    from srscreen.model.model_file import ModelFile
    from srscreen.screening.predict import DamagedShard
    from srscreen.screening.ranking import Table
    from srscreen.data.graph_file import GraphFile
    from srscreen.trainer.trainer import TrainConfig

# Each command imports what it needs when it runs: torch and pymatgen's heavier parts cost ~1.5 s of
# start-up, which `--help`, `info`, `merge` and `featurize` never need.


class _Command(TyperCommand):
    """A command whose usage line reads `srscreen featurize [OPTIONS] SOURCE OUT` (typer's: `{source} {out}`)
    and whose repeatable options read `--model <str>` (typer's: `<list[str]>`)."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name).upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)
        for param in params:
            display = getattr(param, "display_type", None)  # recent typers; older ones show click's metavars
            shown = display(ctx) if isinstance(param, (TyperArgument, TyperOption)) and display else ""
            if shown.startswith("<list["):
                param.display_type = lambda ctx, one=f"<{shown[6:-2].lower()}>": one
        return params


class _Group(TyperGroup):
    def format_commands(self, ctx: typer.Context, formatter) -> None:
        """Each command's first sentence whole (click cuts it to fit one line with `...`)."""
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl([(name, c.get_short_help_str(limit=1_000)) for name, c in commands if c and not c.hidden])


class _App(typer.Typer):
    """Every command of the app gets `_Command`'s help."""

    def command(self, *args, **kwargs):
        return super().command(*args, cls=kwargs.pop("cls", _Command), **kwargs)


def _console(stderr: bool = False) -> Console:
    """Rich wraps lines at 80 columns where its stream is not a terminal, so a message piped into a log
    breaks mid-sentence: there, lines are as long as their text (tables as wide as their cells)."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = 100_000
    return console


# Help in click's plain layout: typer's rich panels squeeze the descriptions into a third of an 80-column terminal.
app = _App(add_completion=False, no_args_is_help=True, cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
           rich_markup_mode=None)
err = _console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from srscreen import __version__
        typer.echo(f"srscreen {__version__}")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """High-throughput screening of crystals with SR-CGCNN."""


# Errors that mean "the arguments or files cannot be used": one line, exit 2, never a traceback. srscreen's
# own errors and the system's (a missing or unreadable file); any other exception is a bug and shows its
# traceback.
USAGE_ERRORS: tuple[type[Exception], ...] = (SrscreenError, OSError)


# Library parameters whose flag is not the parameter's name with dashes (`max_nbr` -> --max-nbr).
FLAG_NAMES = {"sort_by": "sort", "rule": "graph-rule", "descending": "desc", "new_heads": "new-head", "target_weights": "target-weight",
              "milestones": "milestone"}
_PARAMETER = re.compile(r"`([a-z][a-z_]*)(?:=([^`]*))?`")


def flag_text(message: str) -> str:
    """A library message as the command line says it: each parameter it names in backticks (`top`,
    `overwrite=True`, `rule='cgcnn'`) becomes the flag that sets it (--top, --overwrite, --graph-rule cgcnn)."""
    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        option = "--" + FLAG_NAMES.get(name, name.replace("_", "-"))
        if value is None or value == "True":
            return option
        return f"{option} {value.strip(chr(39) + chr(34))}"

    return _PARAMETER.sub(flag, message)


def _fail(message: str, code: int = 2) -> None:
    # The message is text, not markup: a path like `runs[old]/out.h5` must print as it is (and `[/x]` not crash).
    err.print(f"[red]error:[/red] {escape(flag_text(message))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


OVERWRITE_HELP = ("Replace OUT when it exists; without it an existing OUT is refused. Never an input of the command, "
                  "even with it.")


def _model_files(names: list[str]) -> list[Path]:
    """The model arguments that name files (pretrained names name none): inputs no output may replace."""
    from srscreen.model.registry import model_path
    return [p for p in map(model_path, names) if p is not None]


def _no_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal: redirected to a file or pipe, rich prints nothing useful but a blank
    line when one stops, which would split an error message from the command's output."""
    return quiet or not err.is_interactive


@app.command("featurize")
def featurize_cmd(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Folder, structure file, multi-structure file (.jsonl, .extxyz, entry dump .json[.gz|.bz2], ASE .db) or .tar/.zip archive."),
    out: Path = typer.Argument(..., help="Graph file to write (HDF5)."),
    radius: float = typer.Option(8.0, help="Neighbour cutoff radius in Å."),
    max_nbr: int = typer.Option(12, "--max-nbr", help="Neighbours kept per atom (nearest first), plus any tied with the last."),
    graph_rule: str = typer.Option("knn-ties", "--graph-rule", help="'knn-ties': the max-nbr nearest plus every neighbour tied with the max-nbr-th (a function of the crystal); 'cgcnn': exactly max-nbr, padded, for models imported from CGCNN."),
    tie_tolerance: float = typer.Option(1e-4, "--tie-tolerance", help="Å: neighbours this close to the max-nbr-th count as tied with it (knn-ties)."),
    jobs: int = typer.Option(-1, "--jobs", "-j", help="Worker processes; -1 uses every core. Never more than the cores this process may use (a larger value is capped, with a warning: the work is CPU-bound) nor than there are tasks."),
    shard_size: int = typer.Option(4096, help="Structures per shard."),
    max_atoms: int = typer.Option(1000, help="Cells with more atoms are recorded as failures."),
    max_file_mb: float = typer.Option(64.0, "--max-file-mb", help="The most one structure may take once decompressed (a file, an archive member, a JSON entry or line, an extxyz frame), in MB; a larger one is recorded as a failure, read no further (decompression bombs). The largest Materials Project CIF is 11 kB."),
    on_disorder: str = typer.Option("fail", help="Partial occupancies: 'fail' records a failure, 'majority' keeps the majority species."),
    on_isolated_atoms: str = typer.Option("fail", help="Atoms with no neighbour within the radius: 'fail' or 'pad' (CGCNN padding)."),
    min_distance: float = typer.Option(0.5, help="Atoms closer than this (Å) are overlapping: a failure."),
    atom_features: Optional[Path] = typer.Option(None, help="Element feature table (CGCNN atom_init.json); default: srscreen's built-in table."),
    like: Optional[str] = typer.Option(None, "--like", help="Build the graphs this model takes (a pretrained name or a model file, e.g. one from import-cgcnn): its graph rule, radius, max-nbr, tie tolerance and element table, in place of those five flags."),
    id_key: Optional[str] = typer.Option(None, "--id-key", help="ASE databases: the row key that names each structure (default: <file stem>:<row id>)."),
    backend: str = typer.Option("local", help="Where the workers run: 'local' processes or a 'dask' cluster (with --scheduler)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of the dask scheduler for --backend dask, e.g. tcp://head:8786."),
    overwrite: bool = typer.Option(False, help="Start over: remove an existing OUT (or the unfinished OUT.partial/) and featurize everything again. Without it an unfinished run resumes, and a finished OUT is kept only when made from SOURCE as it is now (same files, sizes and times), else refused. OUT may lie inside SOURCE (its own files are left out) but never be or hold it; a second run into an OUT another process is writing is refused, with or without --overwrite."),
    strict: bool = typer.Option(False, help="Exit 1 if any structure failed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Read a structure database in parallel, build crystal graphs and write them into HDF5 shards."""
    from srscreen.data.featurize import FeaturizeOptions, featurize
    from srscreen.graph.settings import ALGORITHMS, GraphSettings
    if graph_rule not in ALGORITHMS:
        _fail(f"--graph-rule must be {' or '.join(ALGORITHMS)}, not {graph_rule!r}")
    for flag, value, ok, need in (("--shard-size", shard_size, shard_size >= 1, "at least 1"),
                                  ("--max-atoms", max_atoms, max_atoms >= 1, "at least 1"),
                                  ("--max-file-mb", max_file_mb, max_file_mb > 0, "above 0"),
                                  ("--jobs", jobs, jobs != 0, "non-zero (-1: every core)")):
        if not ok:  # one flag a message, the one that is wrong (`not` also refuses NaN)
            _fail(f"{flag} must be {need}, not {value}")
    if backend == "local" and jobs > 0:
        from srscreen.data.backends import local_workers
        if local_workers(jobs) < jobs:
            err.print(f"warning: --jobs {jobs} capped to {local_workers(jobs)}, the cores this process may use", highlight=False)
    given = [f"--{name.replace('_', '-')}" for name in ("radius", "max_nbr", "graph_rule", "tie_tolerance", "atom_features")
             if ctx.get_parameter_source(name).name != "DEFAULT"]
    if like is not None and given:
        _fail(f"--like takes the model's graph settings and element table: drop {', '.join(given)}")
    try:  # the settings check their own values (--radius nan, --on-disorder average are refused there)
        graph = GraphSettings(radius=radius, max_nbr=max_nbr, min_distance=min_distance,
                              on_isolated_atoms=on_isolated_atoms, rule=graph_rule, tie_tolerance=tie_tolerance)
        options = FeaturizeOptions(graph=graph, max_atoms=max_atoms, on_disorder=on_disorder, shard_size=shard_size,
                                   id_key=id_key, max_file_mb=max_file_mb)
        model = None
        if like is not None:
            from srscreen.model.registry import resolve_model
            model = resolve_model(like)
    except USAGE_ERRORS as e:
        _fail(str(e))
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=None),
        TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
        console=err, disable=_no_progress(quiet), transient=True,
    )
    started = time.perf_counter()
    with progress:
        task = progress.add_task("featurizing", total=None, rate="", failed=0)

        def report(done: int, failed: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=done, rate=f"{done:,} structures, {rate:,.0f}/s", failed=failed)

        try:
            summary = featurize(source, out, options=options, atom_features=atom_features, like=model, jobs=jobs,
                                overwrite=overwrite, on_progress=report, backend=backend, scheduler=scheduler)
        except USAGE_ERRORS as e:
            _fail(str(e))
    if not quiet:
        elapsed = time.perf_counter() - started
        table = Table(show_header=False)  # the path in a row, not a title: rich breaks a title to the table's width
        table.add_row("graph file", str(out))
        table.add_row("inputs", f"{summary.inputs:,}")
        table.add_row("featurized", f"{summary.structures:,}")
        table.add_row("failed", f"{summary.failed:,}")
        table.add_row("skipped (not structures)", f"{summary.skipped:,}")
        if summary.resumed:
            table.add_row("done by an earlier run", f"{summary.resumed:,}")
        for part in summary.redone:
            table.add_row("damaged part, redone", part)
        table.add_row("time", f"{elapsed:.1f} s")
        err.print(table)
        if summary.failed:
            err.print(f"failures by reason: srscreen info {out}")
    if summary.structures == 0:  # a graph file of no structure: a run that did nothing must not look like one that did
        _fail(f"no structure featurized from {source} ({summary.failed:,} failed, {summary.skipped:,} not structure "
              f"files); the reasons: srscreen info {out}", 1)
    if strict and summary.failed:
        raise typer.Exit(1)


def _reason_kind(reason: str) -> str:
    """The reason without its specifics, for counting failures by kind."""
    return reason.split(":")[0].split("(")[0].strip()


@app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="Graph file written by `srscreen featurize`."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: structures, failed (id, source, reason), skipped, settings, shards, source and source_listing (files, bytes, digest; null in files from before srscreen kept it)."),
    ids: bool = typer.Option(False, "--ids", help="Print the featurized ids, one per line."),
    verify: bool = typer.Option(False, "--verify", help="Check every shard's checksums and structure; exit 2 if any is damaged."),
) -> None:
    """Counts, settings, shards and failures of a graph file."""
    from srscreen.data.graph_file import GraphFile
    try:
        graphs = GraphFile(path)
    except ShardFileError as e:
        _fail(str(e))
    with graphs:
        if verify:
            _verify(graphs)
            return
        if ids:
            from srscreen.io.names import printable  # ids hold no control character since featurize escapes them; older files may

            try:
                for id_ in graphs.ids():
                    sys.stdout.write(printable(id_) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                from srscreen.screening.ranking import reader_closed_stdout
                reader_closed_stdout()
            return
        try:
            failures = graphs.failures()
        except ShardFileError as e:
            _fail(str(e))
        settings = {k: graphs.attrs[k] for k in ("radius", "max_nbr", "neighbour_algorithm", "tie_tolerance",
                                                 "feature_table_id", "feature_table_name") if k in graphs.attrs}
        settings["policies"] = json.loads(graphs.attrs["policies"])
        listing = ({k: graphs.attrs[f"source_{k}"] for k in ("files", "bytes", "digest")}
                   if "source_digest" in graphs.attrs else None)
        if as_json:
            obj = {
                "structures": len(graphs),
                "failed": [{"id": f.id, "source": f.source, "reason": f.reason} for f in failures],
                "skipped": [{"source": s, "reason": r} for s, r in graphs.skipped()],
                "settings": settings,
                "shards": graphs.shard_sizes(),
                "schema_version": graphs.attrs["schema_version"],
                "srscreen_version": graphs.attrs["srscreen_version"],
                "source": graphs.attrs["source"],
                "source_listing": listing,
                "created": graphs.attrs["created"],
            }
            sys.stdout.write(json.dumps(obj) + "\n")
            return
        out = _console()
        table = Table(show_header=False)
        table.add_row("graph file", str(path))
        table.add_row("structures", f"{len(graphs):,}")
        table.add_row("failed", f"{len(failures):,}")
        table.add_row("skipped", f"{int(graphs.attrs['n_skipped']):,}")
        table.add_row("shards", f"{len(graphs.shard_names)}")
        for key, value in {**settings, **settings["policies"]}.items():  # the policies one a row, not a dict
            if key != "policies":
                table.add_row(key, str(value))
        table.add_row("source", str(graphs.attrs["source"]))
        table.add_row("source listing", f"{listing['files']:,} files, {listing['bytes']:,} bytes, digest {listing['digest'][:16]}"
                      if listing else "not recorded (a file from before srscreen kept one: featurize cannot check a rerun)")
        table.add_row("created", str(graphs.attrs["created"]))
        out.print(table)
        if failures:
            reasons = Table(title="failures by reason")
            reasons.add_column("reason")
            reasons.add_column("count", justify="right")
            reasons.add_column("example")
            examples: dict[str, str] = {}
            for f in failures:
                examples.setdefault(_reason_kind(f.reason), f"{f.id}: {f.reason}")
            for kind, count in Counter(_reason_kind(f.reason) for f in failures).most_common():
                reasons.add_row(kind, str(count), examples[kind])
            out.print(reasons)


def _verify(graphs: GraphFile) -> None:
    """`info --verify`: one line per shard on stdout (shard, structures, ok or the damage), then a verdict."""
    report = graphs.verify()
    for name, n, reason in report:
        sys.stdout.write(f"{name}\t{n}\t{'ok' if reason is None else 'DAMAGED: ' + reason}\n")
    sys.stdout.flush()
    damaged = [name for name, _, reason in report if reason is not None]
    if damaged:
        _fail(f"{graphs.path}: {len(damaged)} of {len(report)} parts damaged ({', '.join(damaged[:5])}"
              f"{', ...' if len(damaged) > 5 else ''}); predict --skip-damaged ranks the rest")
    err.print(f"{graphs.path}: all {len(report) - 2} shards and both tables intact", highlight=False)


def _train_progress(epochs: int, quiet: bool) -> tuple[Progress, Callable[[dict], None]]:
    progress = Progress(
        SpinnerColumn(), TextColumn("epoch {task.completed}/{task.total}"), BarColumn(bar_width=None),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err, disable=_no_progress(quiet),
    )
    task = progress.add_task("training", total=epochs, status="")

    def on_epoch(record: dict) -> None:
        progress.update(
            task, completed=record["epoch"],
            status=f"loss {record['train_loss']:.4f}  val MAE {record['val_mae']:.4f} (best epoch {record['best_epoch']})  {record['epoch_s']:.1f} s/epoch",
        )

    return progress, on_epoch


def _use_threads(threads: int) -> None:
    """--threads: torch's CPU threads (0: torch's default)."""
    import torch
    if threads < 0:
        _fail(f"--threads must be 0 (torch's default) or more, not {threads}")
    from srscreen.data.backends import local_workers
    if threads > local_workers(threads):  # --threads 100000 made torch start threads until the process crashed
        err.print(f"warning: --threads {threads} capped to {local_workers(threads)}, the cores this process may use",
                  highlight=False)
        threads = local_workers(threads)
    if threads > 0:
        torch.set_num_threads(threads)


def _label_notes(labels: Path, targets: list[str]) -> None:
    """Say what the labels of each target lose or count once (`LabelReport.notes`): the run's figures are
    over the rest."""
    from srscreen.data.labels import read_labels
    for target in targets:
        for note in read_labels(labels, target).report.notes():
            err.print(f"warning: {escape(note)}", highlight=False, soft_wrap=True)


def _run_training(graphs: Path, labels: Path, out: Path, config: TrainConfig, *, init_model: Optional[str],
                  split: Optional[Path], resume: bool, unit: Optional[str], threads: int, compile: Optional[bool],
                  quiet: bool, overwrite: bool) -> None:
    from srscreen.io.outputs import check_output, output_lock
    from srscreen.model.registry import resolve_model
    from srscreen.trainer.config import check_config
    from srscreen.trainer.trainer import train
    _use_threads(threads)
    progress, on_epoch = _train_progress(config.epochs, quiet)
    try:
        ckpt = out.with_name(out.name + ".ckpt")
        # --resume continues the run that wrote OUT (its OUT.ckpt beside it): replacing that OUT is the point.
        check_output(out, [graphs, labels, split, *_model_files([init_model] if init_model else [])],
                     overwrite=overwrite or (resume and ckpt.exists()), beside=[ckpt, out.with_name(out.name + ".log.jsonl")])
        init = resolve_model(init_model) if init_model else None
        if split is not None:
            from srscreen.trainer.split import read_split_file
            read_split_file(split)  # unusable arguments fail in one line, before any note on the labels
        check_config(config)
        if not quiet:
            _label_notes(labels, list(config.targets))
        with output_lock(out), progress:
            try:
                result = train(graphs, labels, out, config, init=init, split_file=split, resume=resume, unit=unit,
                               command=" ".join(["srscreen", *sys.argv[1:]]), compile=compile, on_epoch=on_epoch)
            except BaseException:
                progress.live.transient = True  # a run that fails leaves its message, not a stale "epoch 0/N" bar
                raise
    except USAGE_ERRORS as e:
        _fail(str(e))
    m = result.model_file
    t = m.training
    test = t.get("test") or {}
    baseline = t.get("baseline_test") or {}
    score = "val MAE" if len(m.targets) == 1 else "val score (mean MAE/std over targets)"
    stopped = (f" (stopped early: no better validation MAE in {config.patience} epochs)"
               if t["epochs_run"] < config.epochs else "")
    err.print(f"wrote {out}: best epoch {t['best_epoch']} of {t['epochs_run']}{stopped}, {score} {t['val_mae']:.4f}"
              + "".join(f"; {target} test MAE {test[target]['mae']:.4f} {m.unit_of(target)} on {test[target]['count']:,} crystals"
                        + (f" ({init_model} on the same crystals: {baseline[target]['mae']:.4f})" if target in baseline else "")
                        for target in m.targets if target in test),
              soft_wrap=True)


@app.command("train")
def train_cmd(
    graphs: Path = typer.Argument(..., help="Graph file from `srscreen featurize`."),
    labels: Path = typer.Option(..., help="CSV with an id column (id, material_id or the first) and target columns."),
    target: list[str] = typer.Option(..., help="Column of the labels file to learn; repeat it for one network with a head per target."),
    target_weight: list[float] = typer.Option([], help="Weight of each target's loss, in --target order (default 1 each)."),
    scale_head: bool = typer.Option(False, "--scale-head", help="Add a head per target that learns the size of its errors: predictions get a calibrated <target>_std (and, with --hull, p_stable) at almost no cost."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (with OUT.ckpt and OUT.log.jsonl beside it)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    steps: int = typer.Option(3, help="Message-passing steps."),
    shared: bool = typer.Option(True, "--shared/--stacked", help="SR-CGCNN (weights tied across steps) or CGCNN."),
    atom_fea_len: int = typer.Option(64, help="Atom feature width."),
    h_fea_len: int = typer.Option(128, help="Hidden width of the head."),
    n_h: int = typer.Option(1, help="Hidden layers of the head."),
    epochs: int = typer.Option(100, help="Passes over the training crystals (fewer with --patience)."),
    batch_size: int = typer.Option(256, help="Crystals per optimiser step."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay."),
    loss: str = typer.Option("mse", help="mse, l1 or huber."),
    schedule: str = typer.Option("multistep", help="multistep (x0.1 at --milestone epochs), cosine or constant."),
    milestone: list[int] = typer.Option([100], help="Epochs where multistep divides the rate by 10 (repeatable)."),
    warmup_epochs: int = typer.Option(0, help="Epochs over which the rate rises linearly to --lr."),
    ema_decay: float = typer.Option(0.0, help="Exponential moving average of the weights per step (0: off)."),
    seed: int = typer.Option(0, help="Seed of the split, the initial weights and the batch order: a run is repeatable."),
    val_fraction: float = typer.Option(0.1, help="Share of the labelled crystals that picks the best epoch (without --split)."),
    test_fraction: float = typer.Option(0.1, help="Share held out for the test MAE the model file records (without --split)."),
    split: Optional[Path] = typer.Option(None, help="CSV of id,split (train/val/test) instead of a random split."),
    patience: int = typer.Option(0, help="Stop after this many epochs without a better validation MAE (0: never)."),
    unit: Optional[str] = typer.Option(None, help="Unit of the target (known for formation energy and band gap)."),
    resume: bool = typer.Option(False, help="Continue from OUT.ckpt after an interruption (or to more epochs); replaces OUT, the same run's model, without --overwrite."),
    threads: int = typer.Option(0, help="CPU threads for the network (0: torch's default, one per physical core); lower it when other jobs share the machine."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Fuse the convolutions with torch.compile: 2x faster epochs on CPU after a one-off ~20-60 s; default: when training crystals x epochs >= 200,000."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notes on the labels; the closing line stays."),
) -> None:
    """Train an SR-CGCNN (or CGCNN) model on labelled crystals of a graph file."""
    from srscreen.trainer.trainer import TrainConfig
    config = TrainConfig(
        target=tuple(target), target_weights=tuple(target_weight), scale_head=scale_head, steps=steps, shared=shared, atom_fea_len=atom_fea_len, h_fea_len=h_fea_len, n_h=n_h,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, loss=loss, schedule=schedule,
        milestones=tuple(milestone), warmup_epochs=warmup_epochs, ema_decay=ema_decay, seed=seed,
        val_fraction=val_fraction, test_fraction=test_fraction, patience=patience,
    )
    _run_training(graphs, labels, out, config, init_model=None, split=split, resume=resume, unit=unit,
                  threads=threads, compile=compile, quiet=quiet, overwrite=overwrite)


@app.command("finetune")
def finetune_cmd(
    graphs: Path = typer.Argument(..., help="Graph file from `srscreen featurize`."),
    labels: Path = typer.Option(..., help="CSV with an id column and target columns."),
    target: list[str] = typer.Option([], help="Column of the labels file to learn, repeatable; default: the model's own targets. The result predicts these targets only."),
    new_head: bool = typer.Option(False, "--new-head", help="Allow a --target the model does not predict: its head starts from random weights (the trunk is the model's)."),
    target_weight: list[float] = typer.Option([], help="Weight of each target's loss, in --target order; default: the weights the model was trained with (1 for a new head)."),
    from_model: str = typer.Option(..., "--from", help="Model to start from: a pretrained name (sr-cgcnn-ef) or a file. An ensemble starts from its first member and gives one model (sigma from its scale heads, none without them); its summary compares with the whole ensemble."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (with OUT.ckpt and OUT.log.jsonl beside it)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    freeze_conv: bool = typer.Option(False, help="Train only the head; embedding and convolutions stay as they are."),
    epochs: int = typer.Option(100, help="Passes over the training crystals (fewer with --patience)."),
    batch_size: int = typer.Option(64, help="Crystals per optimiser step."),
    lr: float = typer.Option(1e-4, help="Learning rate (lower than training from scratch)."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay."),
    loss: str = typer.Option("l1", help="mse, l1 or huber."),
    seed: int = typer.Option(0, help="Seed of the split, the initial weights and the batch order: a run is repeatable."),
    val_fraction: float = typer.Option(0.1, help="Share of the labelled crystals that picks the best epoch (without --split)."),
    test_fraction: float = typer.Option(0.1, help="Share held out for the test MAE the model file records (without --split)."),
    split: Optional[Path] = typer.Option(None, help="CSV of id,split (train/val/test) instead of a random split."),
    unit: Optional[str] = typer.Option(None, help="Unit of a --new-head target (one --target); a target the model predicts keeps its unit."),
    patience: int = typer.Option(20, help="Stop after this many epochs without a better validation MAE."),
    resume: bool = typer.Option(False, help="Continue from OUT.ckpt after an interruption (or to more epochs); replaces OUT, the same run's model, without --overwrite."),
    threads: int = typer.Option(0, help="CPU threads for the network (0: torch's default, one per physical core); lower it when other jobs share the machine."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Fuse the convolutions with torch.compile (see train); default: when training crystals x epochs >= 200,000."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notes on the labels; the closing line stays."),
) -> None:
    """Fine-tune a trained model on your own labelled structures; `predict --model OUT` uses the result."""
    from srscreen.trainer.trainer import TrainConfig
    if not target:
        from srscreen.model.registry import resolve_model
        try:
            target = resolve_model(from_model).targets
        except USAGE_ERRORS as e:
            _fail(str(e))
    config = TrainConfig(
        target=tuple(target), target_weights=tuple(target_weight), new_heads=new_head, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, loss=loss,
        schedule="constant", seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        patience=patience, freeze_conv=freeze_conv,
    )
    _run_training(graphs, labels, out, config, init_model=from_model, split=split, resume=resume, unit=unit,
                  threads=threads, compile=compile, quiet=quiet, overwrite=overwrite)


def _models(names: list[str], fast: bool = False) -> list[ModelFile]:
    """The models a command names, or the defaults; with `fast`, each cut to its first member without
    scale heads (and the defaults are the one-network fast model where installed)."""
    from srscreen.model.registry import default_models, resolve_model
    models = [resolve_model(n) for n in (names or default_models(fast))]
    return [m.fast() for m in models] if fast else models


RANKING_OUT_HELP = "Write here instead of stdout (whole or not at all); '-' is stdout."


def _dash_is_stdout(out: Optional[Path]) -> Optional[Path]:
    """`-o -` means stdout, as it does for most Unix tools: it wrote a file named '-' and the pipe got nothing."""
    return None if out is not None and str(out) == "-" else out


WHERE_HELP = ("Filter COLUMN OP NUMBER (OP: >= <= > < == !=), e.g. 'band_gap>=1.0', 'n_atoms<50'; values are compared "
              "as printed (6 significant digits); repeats combine as AND.")


@app.command("predict")
def predict_cmd(
    graphs: Path = typer.Argument(..., help="Graph file from `srscreen featurize`."),
    top: Optional[int] = typer.Option(None, help="Keep the best K rows (bounded memory); default: every structure."),
    sort: Optional[str] = typer.Option(None, help="Column to rank by, as printed (6 significant digits), equal values by id; default: the first model's target."),
    desc: bool = typer.Option(False, "--desc", help="Rank highest first."),
    where: list[str] = typer.Option([], help=WHERE_HELP),
    model: list[str] = typer.Option([], help="Pretrained name or model file, repeatable; default: sr-cgcnn-ef and sr-cgcnn-eg (with --fast: sr-cgcnn-fast, where installed)."),
    fast: bool = typer.Option(False, "--fast", help="Skip sigma for speed: no *_std or p_stable columns. Without --model: sr-cgcnn-fast, one network for Ef and Eg (v3), ~0.5x the time of v2's Ef and Eg pair, where the default with sigma (three Ef members, one Eg) takes ~1.5x (benchmarks/predict_modes.py). With --model: each model's first member alone without scale heads; single models without scale heads: no change."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_atoms: Optional[int] = typer.Option(None, help="Atoms per batch; default 1,024 on CPU (fastest measured), 32,768 on a GPU."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the models (~1.2x faster on CPU after a ~7-60 s compile); default: only for files of 150,000+ structures."),
    shards: Optional[str] = typer.Option(None, help="Shard range I:J of the file (for splitting one file over several GPUs)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=_dash_is_stdout, help=RANKING_OUT_HELP),
    overwrite: bool = typer.Option(False, help="Replace an existing --out or --damaged-list; without it they are refused. Never an input of the command (GRAPHS, a --model file, --reference), even with it."),
    fmt: str = typer.Option("csv", "--format", help="csv, tsv or jsonl."),
    threads: int = typer.Option(0, help="CPU threads for the network (0: torch's default, one per physical core); with several predicts on one machine, give each cores/N."),
    hull: bool = typer.Option(False, "--hull", help="Add e_above_hull (eV/atom): predicted formation energy against the convex hull of a reference (default: srscreen's Materials Project reference); p_stable, the probability that the crystal is on or below it given the formation energy's sigma (not with --fast); and hull_note, why a row has no e_above_hull (an element the reference lacks)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Reference for --hull (implies it): CSV of formula and formation_energy_per_atom, or a fetch-mp labels.csv."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged", help="Rank every intact shard and list the structures of damaged ones in --damaged-list, instead of stopping."),
    damaged_list: Optional[Path] = typer.Option(None, "--damaged-list", help="CSV of the skipped shards' structures (shard,id,reason); default: GRAPHS.damaged.csv in the current folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict and rank: CSV of rank,id,formula,n_atoms and one column per model on stdout."""
    from srscreen.data.graph_file import GraphFile
    from srscreen.screening.predict import predict
    from srscreen.screening.ranking import FORMATS, Condition
    if fmt not in FORMATS:
        _fail(f"--format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, not {fmt!r}")
    _use_threads(threads)
    damaged_path = damaged_list or Path(graphs.name + ".damaged.csv")
    try:
        from srscreen.io.outputs import check_distinct_outputs, check_output
        check_distinct_outputs({"out": out, "damaged_list": damaged_path if skip_damaged else None})
        for written in ([out] if out is not None else []) + ([damaged_path] if skip_damaged else []):
            check_output(written, [graphs, reference, *_model_files(model)], overwrite=overwrite)
        conditions = [Condition.parse(w) for w in where]
        span = _shard_range(shards)
        models = _models(model, fast)
        reference_hull = None
        if hull or reference is not None:
            from srscreen.screening.hull import ReferenceHull, default_reference

            reference_hull = default_reference() if reference is None else ReferenceHull.from_csv(reference)
        with GraphFile(graphs) as g:  # the structures of the chosen shards (an out-of-range span fails in predict)
            total = sum(g.shard_sizes()[span[0] : span[1]])
        progress = Progress(SpinnerColumn(), TextColumn("predicting"), BarColumn(bar_width=None),
                            TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(),
                            console=err, disable=_no_progress(quiet), transient=True)
        damaged: list[DamagedShard] = []
        with progress:
            task = progress.add_task("predict", total=total)
            ranking = predict(graphs, models, top=top, sort_by=sort, descending=desc, where=conditions, device=device,
                              batch_atoms=batch_atoms, shards=span, compile=compile,
                              on_shard=lambda n: progress.advance(task, n),
                              on_damaged=damaged.append if skip_damaged else None, hull=reference_hull)
    except USAGE_ERRORS as e:
        _fail(str(e))
    if damaged:
        _write_damaged(damaged, damaged_path)
    _write_ranking(ranking.table(fmt), out, overwrite)


def _write_damaged(damaged: list[DamagedShard], path: Path) -> None:
    """The skipped shards' structures as CSV (shard,id,reason; an empty id where the ids were damaged too)."""
    import csv

    try:
        with replace_when_done(path) as tmp, tmp.open("w", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["shard", "id", "reason"])
            for d in damaged:
                writer.writerows([d.shard, id_, d.reason] for id_ in (d.ids if d.ids is not None else [""]))
    except OSError as e:
        _fail(f"{path}: cannot write the damaged-shard list ({e.strerror or e})")
    known = sum(len(d.ids) for d in damaged if d.ids is not None)
    unknown = sum(d.ids is None for d in damaged)
    err.print(f"warning: skipped {len(damaged)} damaged shard(s) ({known:,} structures listed"
              f"{f', {unknown} shard(s) with unreadable ids' if unknown else ''}) in {path}", highlight=False)


@app.command("merge")
def merge_cmd(
    parts: list[Path] = typer.Argument(..., help="Ranked tables written by `predict` (CSV, TSV or JSON lines), in any order; each row is checked whole first, and an id in two parts is refused."),
    top: Optional[int] = typer.Option(None, help="Keep the best K rows (memory O(K)); without it the parts must be ranked by --sort."),
    sort: Optional[str] = typer.Option(None, help="Column to rank by (as printed; equal values by id, as predict ranks); default: the first target column (predict's default)."),
    desc: bool = typer.Option(False, "--desc", help="Rank highest first."),
    where: list[str] = typer.Option([], help=WHERE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=_dash_is_stdout, help=RANKING_OUT_HELP),
    overwrite: bool = typer.Option(False, help="Replace an existing --out; without it, it is refused. Never one of the PARTS, even with it."),
) -> None:
    """Merge the rankings of several `predict --shards` runs (GPUs, nodes) into one global ranking."""
    from srscreen.io.outputs import check_output
    from srscreen.screening.merge import merge_rankings
    from srscreen.screening.ranking import Condition
    try:
        if out is not None:
            check_output(out, parts, overwrite=overwrite)
        ranked = merge_rankings(parts, top=top, sort_by=sort, descending=desc, where=[Condition.parse(w) for w in where])
    except USAGE_ERRORS as e:
        _fail(str(e))
    _write_ranking(ranked, out, overwrite)


def _write_ranking(table: Table, out: Optional[Path], overwrite: bool) -> None:
    """A ranking to `out` (whole or not at all) or stdout (`ranking.write_output`); errors as one line."""
    from srscreen.screening.ranking import write_output
    try:
        write_output(table, out, overwrite=overwrite)
    except OSError as e:
        _fail(f"{out or 'stdout'}: cannot write ({e.strerror or e})")
    except ValueError as e:  # merge: a part found unreadable or unranked while its rows stream; `out` appeared meanwhile
        _fail(str(e))


def _range(option: str, text: Optional[str]) -> Optional[tuple[float, float]]:
    """'A:B' (either side may be empty) as (min, max)."""
    if text is None:
        return None
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        bounds = (float(low) if low.strip() else -1e9, float(high) if high.strip() else 1e9)
    except ValueError:
        raise OptionError(f"{option} {text!r}: write MIN:MAX, e.g. 0:0.05 or 1.5: (either side may be empty)") from None
    if not bounds[0] <= bounds[1]:  # NaN fails this too: no material would match
        raise OptionError(f"{option} {text!r}: MIN must be a number no larger than MAX")
    return bounds


@app.command("fetch-mp")
def fetch_mp_cmd(
    out: Path = typer.Argument(..., help="Folder to write: structures/<material_id>.json, labels.csv, failures.csv. A new folder, or one fetch-mp wrote (it resumes it); a folder with other labels.csv or failures.csv files is refused."),
    chemsys: list[str] = typer.Option([], help="Chemical system, repeatable: Li-Fe-O (exactly these elements), Si-*."),
    elements: Optional[str] = typer.Option(None, help="Elements every material must contain, comma separated: Li,O."),
    ids: list[str] = typer.Option([], "--ids", help="Material ids (mp-149,mp-13) or a file of ids, one per line (blank lines and # comments skipped); repeatable. A file or value with no id is refused before any request."),
    stable: Optional[bool] = typer.Option(None, "--stable/--unstable", help="Only materials on (or off) the convex hull."),
    energy_above_hull: Optional[str] = typer.Option(None, help="Range MIN:MAX in eV/atom, e.g. 0:0.05."),
    band_gap: Optional[str] = typer.Option(None, help="Range MIN:MAX in eV, e.g. 1:3."),
    formation_energy: Optional[str] = typer.Option(None, help="Range MIN:MAX of the formation energy in eV/atom."),
    api_key: Optional[str] = typer.Option(None, help="Materials Project API key; default: $MP_API_KEY. Never printed."),
    endpoint: Optional[str] = typer.Option(None, help="API address; default: mp-api's (https://api.materialsproject.org)."),
    chunk_size: int = typer.Option(500, help="Materials per request."),
    retries: int = typer.Option(5, help="Retries of a request on rate limits (429) and server errors (5xx)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Download structures with their formation energy and band gap from the Materials Project (mp-api).

    Resumable: a second run downloads only what is missing. Then: `srscreen featurize OUT/structures
    OUT.h5` and `srscreen finetune OUT.h5 --labels OUT/labels.csv ...`.

    mp-api is an optional dependency: pip install "srscreen[mp]".
    """
    from srscreen.io.mp import MPFetchError, MPQuery, fetch_mp, material_ids
    from srscreen.io.outputs import check_not_an_input

    try:
        check_not_an_input([out / "structures", out / "labels.csv", out / "failures.csv"],
                           [Path(v) for v in ids if Path(v).is_file()])
        query = MPQuery(
            chemsys=tuple(chemsys), elements=tuple(e.strip() for e in (elements or "").split(",") if e.strip()),
            material_ids=material_ids(ids), stable=stable,
            energy_above_hull=_range("--energy-above-hull", energy_above_hull),
            band_gap=_range("--band-gap", band_gap), formation_energy=_range("--formation-energy", formation_energy),
        )
    except (ValueError, OSError) as e:
        _fail(str(e))
    progress = Progress(SpinnerColumn(), TextColumn("fetching"), BarColumn(bar_width=None),
                        TextColumn("{task.completed:,}/{task.total:,}"), TextColumn("[red]{task.fields[failed]} failed"),
                        TimeElapsedColumn(), console=err, disable=_no_progress(quiet), transient=True)
    with progress:
        task = progress.add_task("fetch", total=None, failed=0)
        try:
            summary = fetch_mp(out, query, api_key=api_key, endpoint=endpoint, chunk_size=chunk_size, retries=retries,
                               on_progress=lambda done, total, failed: progress.update(task, completed=done, total=total, failed=failed))
        except USAGE_ERRORS as e:
            _fail(str(e))
        except MPFetchError as e:
            _fail(str(e), code=1)
    if not quiet:
        table = Table(show_header=False)
        table.add_row("folder", str(out))
        table.add_row("matching the query", f"{summary.matched:,}")
        table.add_row("downloaded now", f"{summary.fetched:,}")
        table.add_row("already there", f"{summary.already:,}")
        table.add_row("failed", f"{summary.failed:,}")
        err.print(table)
        for id_, reason in summary.failures[:5]:
            err.print(f"  {escape(id_)}: {escape(reason)}", highlight=False)
        err.print(f"next: srscreen featurize {out / 'structures'} OUT.h5", highlight=False)


def _shard_range(text: Optional[str]) -> tuple[int, Optional[int]]:
    if text is None:
        return 0, None
    start, sep, stop = text.partition(":")
    try:
        return int(start or 0), (int(stop) if stop else None) if sep else int(start) + 1
    except ValueError:
        raise OptionError(f"--shards {text!r}: write I:J (shard indices, J exclusive)") from None


@app.command("evaluate")
def evaluate_cmd(
    graphs: Path = typer.Argument(..., help="Graph file from `srscreen featurize`."),
    labels: Path = typer.Option(..., help="CSV with an id column and one column per model target."),
    model: list[str] = typer.Option([], help="Pretrained name or model file, repeatable; default: the pretrained pair."),
    plot: Optional[Path] = typer.Option(None, help="Write a parity plot (PNG) here; needs the `plot` extra."),
    overwrite: bool = typer.Option(False, help="Replace an existing --plot; without it, it is refused. Never an input of the command, even with it."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    split: Optional[str] = typer.Option(None, "--split", help="test, val or train: only the crystals of that part of the split each model's file records (`srscreen models` shows it); --split test gives figures on crystals no member trained or was selected on (for a fine-tuned model, its fine-tuning split: the model it started from may have trained on them)."),
) -> None:
    """MAE, RMSE, R² and count of each model on labelled crystals; for a model with σ, also Spearman of
    |error| with σ, the shares of errors within 1 and 2 σ, and the MAE of the surest and least sure tenths."""
    from srscreen.io.outputs import check_output
    from srscreen.screening.evaluate import evaluate
    left_out: list[str] = []
    try:
        if plot is not None:
            check_output(plot, [graphs, labels, *_model_files(model)], overwrite=overwrite)
        models = _models(model)
        results = evaluate(graphs, labels, models, device=device, plot=plot, split=split, warn=left_out.append)
        _label_notes(labels, list(dict.fromkeys(t for per in results.values() for t in per)))  # after: an error is one line
    except USAGE_ERRORS as e:
        _fail(str(e))
    for note in left_out:
        err.print(f"warning: {escape(note)}", highlight=False, soft_wrap=True)
    if as_json:
        # NaN (R² or Spearman of one crystal) as null, as `predict --format jsonl` writes it: strict parsers refuse NaN.
        figures = {name: {t: {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in vars(r).items()}
                          for t, r in per.items()} for name, per in results.items()}
        sys.stdout.write(json.dumps(figures, allow_nan=False) + "\n")
        return
    table = Table(title=f"{graphs} vs {labels}")
    spread = any(hasattr(r, "spearman") for per in results.values() for r in per.values())
    for column in ("model", "target", "unit", "MAE", "RMSE", "R²", "count",
                   *(("Spearman |err|~std", "within 1 std", "within 2 std", "MAE 10% surest", "MAE 10% least sure")
                     if spread else ())):
        table.add_column(column, justify="left" if column in ("model", "target", "unit") else "right")
    for m, (name, per) in zip(models, results.items()):
        for target, r in per.items():
            extra = [] if not spread else ["-"] * 5 if not hasattr(r, "spearman") else [
                f"{r.spearman:.3f}", f"{r.within_1std:.3f}", f"{r.within_2std:.3f}",
                f"{r.mae_most_confident_10pct:.4f}", f"{r.mae_least_confident_10pct:.4f}"]
            table.add_row(name, target, m.unit_of(target), f"{r.mae:.4f}", f"{r.rmse:.4f}", f"{r.r2:.4f}", f"{r.count:,}",
                          *extra)
    _console().print(table)


@app.command("models")
def models_cmd(
    model: list[str] = typer.Argument(None, help="Model files or names to describe; default: the installed pretrained models."),
) -> None:
    """Installed and given models: targets, units, test MAE, network, parameters, graph rule, ensemble members, and where sigma comes from (scale heads, members' spread) with its calibration per target."""
    from srscreen.graph.settings import GraphSettings
    from srscreen.model.registry import pretrained_names, resolve_model
    names = list(model or []) or pretrained_names()
    blocks = []  # one per model, its name whole: a table cut the names to `sr-cgc…` at 80 columns
    for name in names:
        try:
            m = resolve_model(name)
        except ModelFileError as e:
            _fail(str(e))
        arch = m.architecture
        kind = f"{'SR-CGCNN' if arch['shared'] else 'CGCNN'}-{arch['steps']} ({arch['atom_fea_len']} features)"
        params = sum(p.numel() for p in m.build_model().parameters())
        test = m.test_metrics()
        graphs = GraphSettings.from_attrs(m.graph_settings)
        scales = m.calibration.get("scale", {})
        rows = [("target", f"{t}{f' ({u})' if u else ''}, "
                 + (f"test MAE {test[t]['mae']:.4f}{f' {u}' if u else ''}" if t in test else "no test MAE"))
                for t, u in zip(m.targets, m.units)]
        rows += [("network", f"{kind}, {params:,} parameters"),
                 ("graphs", f"{graphs.rule}, {graphs.max_nbr} neighbours, {graphs.radius:g} Å"),
                 ("members", f"{m.n_members}")]
        if m.has_std:  # where `<target>_std` comes from, and its calibration factor per target
            sources = [s for s in ("scale heads" if arch.get("scale_head") else "",
                                   f"the spread of {m.n_members} members" if m.n_members > 1 else "") if s]
            rows.append(("sigma", " and ".join(sources) + ", calibrated "
                         + ", ".join(f"{t} x{scales.get(t, 1.0):.3g}" for t in m.targets)))
        else:
            rows.append(("sigma", "none: no <target>_std or p_stable (train with --scale-head, or ensemble several models)"))
        blocks.append("\n".join([name, *(f"  {key:<8}  {value}" for key, value in rows)]))
    typer.echo("\n\n".join(blocks))


@app.command("ensemble")
def ensemble_cmd(
    members: list[Path] = typer.Argument(..., help="Model files of the same targets (in the same order) and architecture, all with --scale-head or all without, trained with one --split file: e.g. seeds of one recipe."),
    graphs: Path = typer.Option(..., help="Graph file holding the members' validation crystals."),
    labels: Path = typer.Option(..., help="CSV with an id column and a column per target of the members."),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble model file to write."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """One model file of N members whose `predict` adds a calibrated `<target>_std` per target (their spread, plus their scale heads' where they have them)."""
    from srscreen.io.outputs import check_output
    from srscreen.model.model_file import ModelFile
    from srscreen.screening.calibrate import assemble, calibrate
    try:
        check_output(out, [*members, graphs, labels], overwrite=overwrite)
        ensemble = calibrate(assemble([ModelFile.load(p) for p in members]), graphs, labels, device=device)
        ensemble.save(out)
        _label_notes(labels, ensemble.targets)
    except USAGE_ERRORS as e:
        _fail(str(e))
    test, scales = ensemble.test_metrics(), ensemble.calibration["scale"]
    counts = ensemble.calibration["validation_crystals"]
    err.print(f"wrote {out}: {ensemble.n_members} members"
              + "".join(f"; {t}: std scaled by {scales[t]:.3g} on {counts[t]:,} validation crystals"
                        + (f", test MAE {test[t]['mae']:.4f} {ensemble.unit_of(t)}" if t in test else "")
                        for t in ensemble.targets), soft_wrap=True)


@app.command("import-cgcnn")
def import_cgcnn_cmd(
    checkpoint: Path = typer.Argument(..., help="Original CGCNN checkpoint (.pth.tar)."),
    atom_features: Path = typer.Option(..., help="The atom_init.json the checkpoint was trained with."),
    target: str = typer.Option(..., help="Property name, e.g. formation_energy_per_atom."),
    unit: str = typer.Option(..., help="Its unit, e.g. eV/atom."),
    out: Path = typer.Option(..., "--out", "-o", help="srscreen model file to write."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Convert an original CGCNN checkpoint into a srscreen model file (featurize with --like OUT to use it)."""
    from srscreen.io.outputs import check_output
    from srscreen.model.model_file import convert_cgcnn_checkpoint
    try:
        check_output(out, [checkpoint, atom_features], overwrite=overwrite)
        convert_cgcnn_checkpoint(checkpoint, atom_features, target, unit).save(out)
    except USAGE_ERRORS as e:
        _fail(str(e))
    err.print(f"wrote {out}; featurize with --like {out} to predict with it (its graph rule and element table)",
              highlight=False)


class _ReaderMayLeave:
    """stdout for a process whose reader may stop early (`| head`, `| head -c 0`): a closed pipe ends the
    output, not the run, and is not an error. Click and rich both exit 1 on it (Click's main on EPIPE,
    rich's Console.on_broken_pipe), so `models`, `info`, `evaluate`, `--help` and `--version` failed
    under `set -o pipefail` where predict and merge, which catch it themselves, did not."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._unless_closed(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._unless_closed(self._stream.flush)

    @staticmethod
    def _unless_closed(call: Callable[..., object], *args: object) -> None:
        try:
            call(*args)
        except BrokenPipeError:
            from srscreen.screening.ranking import reader_closed_stdout
            reader_closed_stdout()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def main() -> None:
    sys.stdout = _ReaderMayLeave(sys.stdout)
    app()
