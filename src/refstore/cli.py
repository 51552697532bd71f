"""The ``refstore`` command line: parse → build Config → call one function → print.

Errors end in one line plus a hint (never a traceback unless --verbose) and the
error's exit code: 2 config, 3 source, 4 granule, 5 store, 6 not found, 7 conflict.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from refstore.clilog import configure, emit_error
from refstore.errors import ConfigError, RefstoreError

CONFIG_OPTION = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="refstore.toml to use (default: ./refstore.toml or $REFSTORE_CONFIG).",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _quiet_icechunk() -> None:
    # Done once for the process by refstore.clilog.configure (ICECHUNK_LOG is set before
    # Icechunk is imported); kept so commands read the same as before.
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--verbose", "-v", is_flag=True, help="Log details, third-party warnings and tracebacks."
)
@click.option("--log-json", is_flag=True, help="Write log events to stderr as JSON, one a line.")
@click.option(
    "--config",
    "-c",
    "group_config",
    type=click.Path(dir_okay=False),
    default=None,
    help="refstore.toml to use (also accepted after the command).",
)
@click.version_option(package_name="refstore")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, log_json: bool, group_config: str | None) -> None:
    """Keep virtual Zarr references of a growing NetCDF4/HDF5 collection.

    A SQLite ledger remembers the granules already referenced; `sync` adds only new
    ones to an Icechunk repository (one snapshot per update) and refreshes a kerchunk
    Parquet export. `open --at` and `export --at` travel back in time.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["config"] = group_config
    ctx.obj["log_json"] = log_json
    configure(verbose=verbose, log_json=log_json)


def _event(message: str, level: int = logging.WARNING, **fields: Any) -> None:
    """A notice on stderr: a plain line, or a JSON event with ``fields`` (--log-json)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and (ctx.find_object(dict) or {}).get("log_json"):
        logging.getLogger("refstore").log(level, message, extra=fields)
    elif level >= logging.WARNING:
        click.echo(message, err=True)


def _load(config_path: str | None, **overrides: Any) -> Any:
    from refstore.config import load_config

    if config_path is None:
        ctx = click.get_current_context(silent=True)
        obj = ctx.find_object(dict) if ctx else None
        config_path = obj.get("config") if obj else None
    return load_config(config_path, overrides=overrides)


@cli.command()
@click.option("--source", "source_url", required=True, help="Folder or glob of granules.")
@click.option("--concat-dim", default="time", show_default=True)
@click.option("--repo", default="state/repo", show_default=True)
@click.option("--ledger", default="state/ledger.db", show_default=True)
@click.option("--export", "export_path", default="state/export/refs.parquet", show_default=True)
@click.option("--loadable", multiple=True, help="Variable to load (repeat); default: automatic.")
@click.option("--drop", multiple=True, help="Variable to leave out (repeat).")
@click.option(
    "--group",
    default="",
    help='HDF5 group holding the dataset; "*" or "a,b": a whole hierarchy (docs/layouts.md).',
)
@click.option(
    "--concat-from",
    default="auto",
    show_default=True,
    help='Files without the concat dim: "scalar", "attr:NAME", "filename:%Y%m%d"; '
    'a dim with no coordinate: "arrival"; a repeating index: "var:NAME" (docs/layouts.md).',
)
@click.option(
    "--path",
    "out",
    type=click.Path(dir_okay=False),
    default="refstore.toml",
    show_default=True,
    help="Where to write the configuration.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(
    source_url: str,
    concat_dim: str,
    repo: str,
    ledger: str,
    export_path: str,
    loadable: tuple[str, ...],
    drop: tuple[str, ...],
    group: str,
    concat_from: str,
    out: str,
    force: bool,
) -> None:
    """Write a refstore.toml (relative paths resolve against its folder)."""
    from refstore.config import load_config, render_toml

    path = Path(out)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already.", "Pass --force to overwrite it.")
    text = render_toml(
        source_url=source_url,
        concat_dim=concat_dim,
        repo=repo,
        ledger=ledger,
        export=export_path,
        loadable_variables=loadable or None,
        drop_variables=drop,
        group=tuple(g.strip() for g in group.split(",")) if "," in group else group,
        concat_from=concat_from,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Validate before writing: parse a draft beside the target, check a local source
    # exists, and only then put the file in place.
    draft = path.with_name(f".{path.name}.draft")
    draft.write_text(text)
    try:
        _check_source(load_config(draft, environ={}))
        os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    click.echo(f"wrote {path}")


def _check_source(cfg: Any) -> None:
    """A local source folder (or a glob's folder) must exist; remote ones are not asked."""
    from refstore.storage import is_local

    if not cfg.source_url or not is_local(cfg.source_url):
        return
    local = Path(cfg.source_url.removeprefix("file://"))
    folder = local
    while any(ch in folder.name for ch in "*?[") and folder != folder.parent:
        folder = folder.parent
    if not folder.exists():
        raise ConfigError(
            f"The source {local} does not exist.",
            "Pass --source an existing folder or glob of granules "
            "(relative to the refstore.toml's folder).",
        )


def _progress_factory(enabled: bool) -> Callable[[int, str], Callable[[Any], None]] | None:
    if not enabled:
        return None

    def factory(total: int, label: str) -> Callable[[Any], None]:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, unit="granule", file=sys.stderr, leave=False)

        def done(_result: Any) -> None:
            bar.update(1)
            if bar.n >= total:
                bar.close()

        return done

    return factory


@cli.command()
@CONFIG_OPTION
@click.option("--source", "source_url", help="Override [source] url.")
@click.option("--tag", help="Tag the new snapshot (if anything was added).")
@click.option("--executor", type=click.Choice(["auto", "serial", "processes", "dask"]))
@click.option("--workers", type=int, help="Parallel workers (default: number of cores).")
@click.option("--dask-address", help="A dask.distributed scheduler, e.g. tcp://127.0.0.1:8786.")
@click.option("--batch-size", type=int, help="Granules per commit (default 1000).")
@click.option("--wait", type=float, default=0, help="Seconds to wait for a running sync.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a tty).")
@JSON_OPTION
def sync(
    config_path: str | None,
    source_url: str | None,
    tag: str | None,
    executor: str | None,
    workers: int | None,
    dask_address: str | None,
    batch_size: int | None,
    wait: float,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Add new granules to the store: one snapshot per update, then refresh the export."""
    from refstore.sync import sync as run_sync

    _quiet_icechunk()
    cfg = _load(
        config_path,
        source_url=source_url,
        executor=executor,
        workers=workers,
        dask_address=dask_address,
        batch_size=batch_size,
    )
    show = sys.stderr.isatty() if progress is None else progress
    result = run_sync(cfg, tag=tag, wait=wait, progress=_progress_factory(show and not as_json))
    if as_json:
        _echo_json(result.to_dict())
    else:
        _print_sync(result)
    if result.tag_refused:
        from refstore.errors import TagExistsError

        raise TagExistsError(
            result.tag_refused,
            "The snapshot was committed and exported; tag it with another name "
            "(`refstore log` lists the tags).",
        )


def _print_sync(result: Any) -> None:
    for f in result.quarantined:
        _event(f"quarantined {f.reason}", key=f.key, reason=f.reason)
    for key in result.missing:
        _event(f"missing     {key}: no longer in the source (kept in the store)", key=key)
    _event("sync finished", logging.INFO, **result.to_dict())
    if result.up_to_date:
        click.echo(f"up to date ({result.discovered} granule(s) in the source)")
    else:
        click.echo(
            f"added {len(result.added)} granule(s) {result.start} .. {result.end} "
            f"in snapshot(s) {', '.join(result.snapshots)}"
        )
    if result.placed_elsewhere or result.conflicts:
        click.echo(
            f"{len(result.placed_elsewhere)} granule(s) were placed by another writer first; "
            f"{result.conflicts} commit race(s) lost and retried"
        )
    if result.export:
        click.echo(f"export {result.export}")


@cli.command()
@CONFIG_OPTION
@JSON_OPTION
def status(config_path: str | None, as_json: bool) -> None:
    """Granules per status, quarantined ones with reasons, coverage and last runs."""
    from refstore.status import gather_status

    _quiet_icechunk()
    info = gather_status(_load(config_path))
    if as_json:
        _echo_json(info)
        return
    click.echo(f"store     {info['repo']}")
    click.echo(f"head      {info['head'] or '(empty)'}")
    if info["ledger_behind"]:
        click.echo(f"note      {_BEHIND}")
    hosts = ", ".join(f"{h['host']} ({h['from']})" for h in info["hosts"])
    click.echo(f"hosts     {hosts or '(none yet: decided by the first sync)'}")
    click.echo(f"coverage  {info['start']} .. {info['end']}  ({info['length']} steps)")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(info["counts"].items())) or "none"
    click.echo(f"granules  {counts}")
    for gap in info["gaps"]:
        click.echo(f"  gap between {gap['after']} and {gap['before']}")
    for q in info["quarantined"]:
        click.echo(f"  quarantined {q['reason']}")
    for m in info["missing"]:
        click.echo(f"  missing     {m['key']}: gone from the source since {m['since']}")
    for u in info["unavailable"]:
        start, stop = u["steps"]
        click.echo(f"  unavailable steps {start}..{stop - 1} ({u['key']}): {u['why']}")
    for run in info["runs"][:5]:
        click.echo(
            f"run {run['id']}  {run['status']:<7} +{run['added'] or 0} "
            f"quarantined {run['quarantined'] or 0}"
        )


@cli.command(name="log")
@CONFIG_OPTION
@click.option("--limit", "-n", type=int, default=None, help="Show the newest N snapshots.")
@click.option(
    "--keys",
    is_flag=True,
    help="With --json: each snapshot's granule keys too (read from the repository).",
)
@JSON_OPTION
def log_cmd(config_path: str | None, limit: int | None, keys: bool, as_json: bool) -> None:
    """The store's snapshots, newest first, with their tags and granule counts."""
    from refstore.mirror import known_store

    _quiet_icechunk()
    store = known_store(_load(config_path))
    entries = store.log(limit)
    if as_json:
        if keys:  # kept out of commit metadata and the mirror (refstore.details)
            loaded = store.with_details([c for c, _ in entries], store.head_snapshot())
            entries = [(c, tags) for c, (_, tags) in zip(loaded, entries, strict=True)]
        _echo_json(
            [
                {
                    "snapshot": c.snapshot,
                    "written_at": c.written_at,
                    "message": c.message,
                    "tags": tags,
                    "granules": c.count,
                    **({"keys": list(c.granules)} if keys else {}),
                    "start": c.start,
                    "end": c.end,
                }
                for c, tags in entries
            ]
        )
        return
    for c, tags in entries:
        tag_text = f" [{', '.join(tags)}]" if tags else ""
        click.echo(f"{c.snapshot}{tag_text}  {c.written_at[:19]}  {c.message}")


@cli.command(name="open")
@CONFIG_OPTION
@click.option("--at", "at", help="Snapshot id, tag or ISO date/datetime.")
@click.option("--export", "from_export", is_flag=True, help="Read the Parquet export instead.")
@JSON_OPTION
def open_cmd(config_path: str | None, at: str | None, from_export: bool, as_json: bool) -> None:
    """Open the dataset (as it was at REF) and print a summary."""
    from refstore.api import open_dataset
    from refstore.ledger import Ledger
    from refstore.status import unavailable

    _quiet_icechunk()
    cfg = _load(config_path)
    ds = open_dataset(cfg, at=at, source="export" if from_export else "repo")
    with Ledger(cfg.ledger, readonly=True) as ledger:
        gaps = unavailable(ledger.rows().values()) if at is None else []
    for u in gaps:
        start, stop = u["steps"]
        click.echo(f"unavailable steps {start}..{stop - 1} ({u['key']}): {u['why']}", err=True)
    if as_json:
        _echo_json(
            {
                "dims": {str(k): int(v) for k, v in ds.sizes.items()},
                "data_vars": sorted(str(v) for v in ds.data_vars),
                "coords": sorted(str(v) for v in ds.coords),
                "attrs": {str(k): str(v) for k, v in ds.attrs.items()},
            }
        )
        return
    click.echo(str(ds))


@cli.command()
@CONFIG_OPTION
@click.option("--at", "at", help="Snapshot id, tag or ISO date/datetime (default: head).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "json"]), default="parquet")
@click.option("-o", "--output", type=click.Path(), help="Where to write (default: [store] export).")
def export(config_path: str | None, at: str | None, fmt: str, output: str | None) -> None:
    """Write a kerchunk reference export of a snapshot (atomically)."""
    from refstore.api import open_store
    from refstore.sync import export_snapshot

    _quiet_icechunk()
    cfg = _load(config_path)
    store = open_store(cfg)
    if at is not None:
        from refstore.maintenance import check_not_expired

        check_not_expired(cfg, store, at)
    path = export_snapshot(cfg, store, store.source, store.resolve(at), output, fmt)
    click.echo(f"wrote {path}")


@cli.command()
@CONFIG_OPTION
@click.option("--sample", type=int, default=10, show_default=True, help="Random chunks to read.")
@click.option("--at", "at", help="Snapshot id, tag or ISO date/datetime (default: head).")
@click.option("--seed", type=int, default=None, help="Seed for the chunk sample.")
@click.option(
    "--published",
    type=click.Path(file_okay=False),
    help="Folder `refstore publish` wrote (default: the export's, when published there).",
)
@JSON_OPTION
def verify(
    config_path: str | None,
    sample: int,
    at: str | None,
    seed: int | None,
    published: str | None,
    as_json: bool,
) -> None:
    """Compare random chunks with the source files and every source's revision, and run
    the open code `refstore publish` wrote."""
    from refstore.errors import IntegrityError
    from refstore.verify import verify as run_verify

    _quiet_icechunk()
    report = run_verify(_load(config_path), sample=sample, at=at, seed=seed, published=published)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(
            f"snapshot {report.snapshot}: {report.granules} granule(s), "
            f"{report.chunks_checked} chunk(s) compared with their source files"
        )
        for line in report.mismatches + report.changed + report.missing:
            click.echo(f"  {line}")
        for title in report.published:
            click.echo(f"  ran the published code: {title}")
        for note in report.notes:
            click.echo(f"  note: {note}")
    if not report.ok:
        n = len(report.mismatches) + len(report.changed) + len(report.missing)
        raise IntegrityError(f"verify found {n} problem(s) in snapshot {report.snapshot}.")
    if not as_json:
        click.echo("ok: the store serves what the sources hold")


@cli.command()
@CONFIG_OPTION
@click.argument("keys", nargs=-1)
@click.option("--wait", type=float, default=0, help="Seconds to wait for a running sync.")
def retry(config_path: str | None, keys: tuple[str, ...], wait: float) -> None:
    """Queue quarantined granules (all, or KEYS) for the next sync, then sync."""
    from refstore.ledger import Ledger
    from refstore.lock import store_lock

    cfg = _load(config_path)
    with store_lock(cfg.ledger, wait=wait):
        ledger = Ledger(cfg.ledger)
        queued = ledger.requeue_quarantined(keys or None)
        ledger.close()
    click.echo(f"queued {len(queued)} granule(s) for retry")
    if queued:
        ctx = click.get_current_context()
        ctx.invoke(sync, config_path=config_path, wait=wait)


_BEHIND = (
    "the ledger is behind the repository: another writer committed since the last "
    "sync here (`refstore sync` reconciles it)"
)


@cli.command(name="ls")
@CONFIG_OPTION
@click.option("--state", help="Only this state: committed, quarantined, new, virtualized, missing.")
@click.option("--since", help="Only granules whose data ends at or after this (ISO) value.")
@click.option("--at", "at", help="What this snapshot id, tag or date held.")
@JSON_OPTION
def ls_cmd(
    config_path: str | None, state: str | None, since: str | None, at: str | None, as_json: bool
) -> None:
    """One row per granule: key, state, time range, position, revision, snapshot, reason."""
    from refstore.listing import dumps, list_granules, render

    cfg = _load(config_path)
    rows = list_granules(cfg, state=state, since=since, at=at)
    if at is None:
        from refstore.mirror import ledger_behind

        if ledger_behind(cfg):
            _event(f"refstore: note: {_BEHIND}")
    if as_json:
        click.echo(dumps(rows))
        return
    click.echo("\n".join(render(rows)))  # one write: click flushes after each echo


@cli.command(name="coverage")
@CONFIG_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the PNG here.")
@click.option("--cadence", help='Expected step, e.g. "6h" (default: [dataset] cadence).')
@JSON_OPTION
def coverage_cmd(
    config_path: str | None, output: str | None, cadence: str | None, as_json: bool
) -> None:
    """The concat dim's timeline: present steps, gaps vs the cadence, late, revised,
    quarantined, missing sources and snapshot ends (JSON and/or a PNG)."""
    from refstore.coverage import draw, gather

    cfg = _load(config_path)
    cov = gather(cfg, cadence or cfg.cadence)
    if output:
        draw(cov, output, title=Path(cfg.repo).name)
    if as_json:
        _echo_json(cov.to_dict())
        return
    facts = cov.to_dict()
    click.echo(
        f"{facts['steps']} steps {facts['start']} .. {facts['end']}, "
        f"{len(facts['runs'])} run(s), {len(facts['gaps'])} gap(s), {len(facts['late'])} late, "
        f"{len(facts['revised'])} revised, {len(facts['quarantined'])} quarantined, "
        f"{len(facts['missing'])} missing"
    )
    for g in facts["gaps"]:
        click.echo(f"  gap after {g['after']} before {g['before']} ({g['missing_steps']} step(s))")
    if output:
        click.echo(f"wrote {output}")


@cli.command(name="gc")
@CONFIG_OPTION
@click.option("--keep-last", type=int, help="Keep the newest N snapshots ([maintenance]).")
@click.option("--keep-days", type=float, help="Keep snapshots newer than D days.")
@click.option("--export-grace-hours", type=float, help="Keep a replaced export this long.")
@click.option("--dry-run", is_flag=True, help="Print what would go; change nothing.")
@click.option("--wait", type=float, default=0, help="Seconds to wait for a running sync.")
@JSON_OPTION
def gc_cmd(
    config_path: str | None,
    keep_last: int | None,
    keep_days: float | None,
    export_grace_hours: float | None,
    dry_run: bool,
    wait: float,
    as_json: bool,
) -> None:
    """Expire snapshots the retention policy lets go (tags are kept), delete what only
    they used, and prune export versions no reader can be using."""
    from refstore.maintenance import Policy, gc

    _quiet_icechunk()
    cfg = _load(config_path)
    policy = Policy.of(
        cfg, keep_last=keep_last, keep_days=keep_days, export_grace_hours=export_grace_hours
    )
    report = gc(cfg, policy, dry_run=dry_run, wait=wait)
    if as_json:
        _echo_json(report.to_dict())
        return
    verb = "would expire" if dry_run else "expired"
    click.echo(
        f"{verb} {len(report.expired)} of {report.snapshots_before} snapshot(s) "
        f"(older than {report.bound or '-'}; keep last {policy.keep_last}, "
        f"{policy.keep_days:g} day(s), every tag)"
    )
    for tag in report.old_tags:
        click.echo(f"  tag {tag} kept (older than the bound)")
    freed = "would free" if dry_run else "freed"
    click.echo(f"{freed} {report.manifests} manifest(s), {report.bytes:,} bytes")
    if report.objects_before is not None:
        click.echo(
            f"repository {report.objects_before:,} objects {report.bytes_before:,} bytes -> "
            f"{report.objects_after:,} objects {report.bytes_after:,} bytes"
        )
    for p in report.exports_pruned:
        click.echo(f"{'would prune' if dry_run else 'pruned'} export version {p}")
    if report.oldest_available:
        click.echo(f"oldest snapshot kept {report.oldest_available}")


@cli.command(name="publish")
@CONFIG_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="Folder to write into (default: the export's folder).",
)
@click.option("--umm", is_flag=True, help="Also write a UMM-C RelatedUrls entry for a DAAC.")
@JSON_OPTION
def publish_cmd(config_path: str | None, output: str | None, umm: bool, as_json: bool) -> None:
    """Write a STAC Collection, OPEN.md (what to authorize, how to open), index.html and
    coverage.png beside the export, for the store's readers."""
    from refstore.publish import publish

    report = publish(_load(config_path), output, umm=umm)
    if as_json:
        _echo_json(report.to_dict())
        return
    click.echo(f"published snapshot {report.snapshot} in {report.folder}")
    for f in report.files:
        click.echo(f"  wrote {f}")


@cli.command(name="watch")
@CONFIG_OPTION
@click.option(
    "--interval", default="6h", show_default=True, help='Between runs: "6h", "30min", "1d".'
)
@click.option(
    "--jitter", type=float, default=0.1, show_default=True, help="± fraction of the wait."
)
@click.option("--max-backoff", default="1h", show_default=True, help="Longest wait after failures.")
@click.option(
    "--grace",
    default="5min",
    show_default=True,
    help="On stop, let a running sync finish this long.",
)
@click.option(
    "--heartbeat",
    type=click.Path(dir_okay=False),
    help="Heartbeat JSON (default: beside the ledger).",
)
@click.option("--runs", type=int, help="Stop after N runs (default: run until SIGTERM/SIGINT).")
@click.option(
    "--publish", "then_publish", is_flag=True, help="`refstore publish` after each new snapshot."
)
def watch_cmd(
    config_path: str | None,
    interval: str,
    jitter: float,
    max_backoff: str,
    grace: str,
    heartbeat: str | None,
    runs: int | None,
    then_publish: bool,
) -> None:
    """Sync every interval (with jitter; backing off after failures) until SIGTERM or
    SIGINT, writing a heartbeat file with the last run's outcome."""
    from refstore.coverage import parse_cadence
    from refstore.watch import Watcher, WatchPolicy, refstore_command, sync_command

    cfg = _load(config_path)  # fails now, not in the first run, on a bad configuration
    policy = WatchPolicy(
        interval=float(parse_cadence(interval)),
        jitter=jitter,
        max_backoff=float(parse_cadence(max_backoff)),
        grace=float(parse_cadence(grace)) if grace.strip() not in ("0", "0s") else 0.0,
    )
    beat = Path(heartbeat) if heartbeat else Path(cfg.ledger).parent / "watch-heartbeat.json"
    ctx = click.get_current_context()
    path = config_path or (ctx.find_object(dict) or {}).get("config") or cfg.config_path
    watcher = Watcher(
        policy,
        sync_command(path),
        beat,
        runs=runs,
        say=lambda line: click.echo(line),
        publish_argv=refstore_command(path, "publish") if then_publish else None,
    )
    watcher.install_handlers()
    click.echo(f"watching: sync every {interval} (±{jitter:.0%}); heartbeat {beat}")
    sys.exit(watcher.run())


def main() -> None:
    """Entry point: run the CLI, turning refstore errors into one line and a hint."""
    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    log_json = "--log-json" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("refstore: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except RefstoreError as e:
        if verbose:
            raise
        emit_error(e.message, e.hint, e.exit_code, log_json=log_json)
        sys.exit(e.exit_code)
    except (OSError, sqlite3.OperationalError) as e:
        # A state, store or export folder that is read-only or full: the path and the fix.
        if verbose or not _is_unwritable(e):
            _unexpected(e, verbose)
        where = getattr(e, "filename", None) or "a state file (the ledger)"
        click.echo(f"refstore: error: cannot write {where}: {_strerror(e)}", err=True)
        click.echo(
            "  hint: make the [store] folders writable and free some space; "
            "status, log and verify need no write access.",
            err=True,
        )
        sys.exit(5)
    except KeyboardInterrupt:
        click.echo(
            "refstore: interrupted; the store is unchanged since its last snapshot", err=True
        )
        sys.exit(130)
    except Exception as e:
        _unexpected(e, verbose)


def _unexpected(e: BaseException, verbose: bool) -> None:
    if verbose:
        raise e
    click.echo(f"refstore: unexpected error: {type(e).__name__}: {e}", err=True)
    click.echo("  hint: run again with --verbose and report the traceback.", err=True)
    sys.exit(1)


_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _is_unwritable(e: BaseException) -> bool:
    if isinstance(e, sqlite3.OperationalError):
        text = str(e)
        return "readonly" in text or "disk is full" in text or "unable to open" in text
    return isinstance(e, OSError) and e.errno in _UNWRITABLE


def _strerror(e: BaseException) -> str:
    return (e.strerror if isinstance(e, OSError) else None) or str(e)
