"""``lanner catalog``: reference catalogs in the chunked layout (load, list, drop, purge)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.cli.common import clean_errors, console, out
from broker.config import get_settings
from broker.exceptions import LannerError

app = typer.Typer(
    help="Reference catalogs in the chunked layout (load, list, purge-tombstones).",
    no_args_is_help=True)


@app.command("load")
@clean_errors
def catalog_load(
    name: Annotated[str, typer.Argument(help="Catalog name: lower-case letters, digits, _.")],
    file: Annotated[Path, typer.Argument(help="Parquet (.parquet) or CSV (.csv, .csv.gz) file.")],
    id_col: Annotated[str, typer.Option("--id-col", help="Column of the unique id.")] = "id",
    ra_col: Annotated[str, typer.Option("--ra-col", help="Column of RA, degrees.")] = "ra",
    dec_col: Annotated[str, typer.Option("--dec-col", help="Column of Dec, degrees.")] = "dec",
    batch_rows: Annotated[int, typer.Option(
        "--batch-rows", min=1000, max=5_000_000, help="Rows read and stored per batch.")] = 200_000,
    kind: Annotated[str, typer.Option(
        "--kind", help="What the catalog holds: star, galaxy, qso or generic (decides how an "
                       "alert near one of its rows is read). A galaxy catalog needs "
                       "--major-col.")] = "generic",
    major_col: Annotated[str | None, typer.Option(
        "--major-col", help="Column of the major axis (a diameter in arcmin by default, as "
                            "OpenNGC's).")] = None,
    minor_col: Annotated[str | None, typer.Option(
        "--minor-col", help="Column of the minor axis (same unit; missing: a circle).")] = None,
    pa_col: Annotated[str | None, typer.Option(
        "--pa-col", help="Column of the position angle, degrees east of north.")] = None,
    axis_unit: Annotated[str, typer.Option(
        "--axis-unit", help="Unit of the axis columns: arcmin, arcsec or deg.")] = "arcmin",
    axes: Annotated[str, typer.Option(
        "--axes", help="Whether the axis columns are diameters or radii (semi-axes).")
    ] = "diameter",
    pmra_col: Annotated[str | None, typer.Option(
        "--pmra-col", help="Column of the proper motion in RA (mu_alpha cos delta), mas/yr: "
                           "a star is then moved to each alert's epoch before it is "
                           "judged.")] = None,
    pmdec_col: Annotated[str | None, typer.Option(
        "--pmdec-col", help="Column of the proper motion in Dec, mas/yr.")] = None,
    epoch: Annotated[float | None, typer.Option(
        "--epoch", help="Julian epoch of the positions, e.g. 1991.25 for Hipparcos, 2016.0 "
                        "for Gaia DR3 (needed with --pmra-col).")] = None,
    overlap_arcmin: Annotated[float | None, typer.Option(
        "--overlap-arcmin", help="The catalog's overlap radius in arcmin (default 1, at most "
                                 "12): nothing further from an alert can be matched, so a "
                                 "catalog of large galaxies needs more.")] = None,
    describe: Annotated[Path | None, typer.Option(
        "--describe", help="JSON file of the catalog's description and its columns' units, "
                           'UCDs and descriptions, shown in TAP_SCHEMA: {"description": ..., '
                           '"columns": {"COLUMN": {"unit": ..., "ucd": ..., "description": '
                           "...}}} (input column names).")] = None,
    only: Annotated[str | None, typer.Option(
        "--only", help="Load only the rows whose COLUMN is one of the values: "
                       "COLUMN=V1[,V2...] (e.g. type=G for OpenNGC's galaxies).")] = None,
) -> None:
    """Load (or reload, atomically) a reference catalog from a Parquet or CSV file.

    Fails at once if another process is loading or changing the same catalog.
    """
    from broker.domain.catalogs import MotionSpec, ShapeSpec, select_rows  # noqa: PLC0415

    if major_col is None and (minor_col or pa_col):
        raise LannerError("--minor-col and --pa-col need --major-col")
    shape = None if major_col is None else ShapeSpec(major_col, minor_col, pa_col, axis_unit,
                                                     axes)
    if (pmra_col is None) != (pmdec_col is None) or (pmra_col is not None and epoch is None):
        raise LannerError("--pmra-col, --pmdec-col and --epoch go together")
    motion = None if pmra_col is None or pmdec_col is None or epoch is None else MotionSpec(
        pmra_col, pmdec_col, epoch)
    only_column, only_values = None, []
    if only is not None:
        only_column, _, values = only.partition("=")
        only_values = [v.strip() for v in values.split(",") if v.strip()]
        if not only_column.strip() or not only_values:
            raise LannerError(f"--only {only!r} is not COLUMN=V1[,V2...]")
    description = None
    if describe is not None:
        import json  # noqa: PLC0415

        from broker.domain.described import description_from  # noqa: PLC0415

        try:
            description = description_from(json.loads(describe.read_text()))
        except (OSError, ValueError) as exc:
            raise LannerError(f"--describe {describe}: {exc}") from None
    import pyarrow as pa  # noqa: PLC0415
    from rich.progress import Progress  # noqa: PLC0415

    from broker.factory import Factory  # noqa: PLC0415
    from broker.storage.refcat import open_catalog_file  # noqa: PLC0415

    factory = Factory(get_settings())
    source = open_catalog_file(file, batch_rows)
    store = factory.refcats
    try:
        with Progress(console=console) as progress:
            task = progress.add_task(f"loading {name} ({source.unit})", total=source.total)
            batches = source.batches
            if only_column is not None:
                batches = select_rows(batches, only_column.strip(), only_values)
            report = store.load(name, batches, id_col, ra_col, dec_col,
                                lambda _: progress.update(task, completed=source.position()),
                                kind=kind, shape=shape, motion=motion,
                                overlap_deg=None if overlap_arcmin is None
                                else overlap_arcmin / 60.0, description=description)
            progress.update(task, completed=source.total)
    except ValueError as exc:
        raise LannerError(str(exc)) from None
    except pa.ArrowException as exc:
        raise LannerError(f"cannot read {file}: {exc}") from None
    finally:
        source.close()
        factory.close()
    out.print(f"catalog {name} v{report.version}: {report.rows} rows, {report.skipped} skipped "
              f"(no valid position or id), {report.overlap_rows} overlap rows, "
              f"{report.seconds:.1f} s ({report.rows / max(report.seconds, 1e-9):,.0f} rows/s)",
              highlight=False)


@app.command("purge-tombstones")
@clean_errors
def catalog_purge_tombstones(
    name: Annotated[str, typer.Argument(help="Catalog name.")],
    older_than: Annotated[float | None, typer.Option(
        "--older-than", min=0,
        help="Remove tombstones of deletes applied more than this many seconds ago (default: "
             "LANNER_DR_TOMBSTONE_GRACE_S). Keep it above the retention of dr.updates plus its "
             "segment roll time, or an older change still in the topic can bring a deleted "
             "row back.")] = None,
) -> None:
    """Remove old tombstones of deleted rows (left by `lanner dr-updates`); rows are unchanged."""
    from broker.factory import Factory  # noqa: PLC0415

    settings = get_settings()
    grace = settings.dr_tombstone_grace_s if older_than is None else older_than
    factory = Factory(settings)
    store = factory.refcats
    try:
        removed = store.purge_tombstones(name, grace)
    except ValueError as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    age = f"{grace:,.0f} s ({grace / 86_400:g} days)" if grace >= 86_400 else f"{grace:g} s"
    out.print(f"catalog {name}: {removed} tombstones older than {age} removed", highlight=False)


@app.command("drop")
@clean_errors
def catalog_drop(
    name: Annotated[str, typer.Argument(help="Catalog name.")],
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget a reference catalog and drop its tables on every shard (waits for its lock)."""
    from broker.exceptions import UnknownCatalogError  # noqa: PLC0415
    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    store = factory.refcats
    try:
        entry = next((e for e in store.list() if e["name"] == name), None)
        if entry is None:
            raise UnknownCatalogError(name)
        if not yes and not typer.confirm(f"drop catalog {name} ({entry['rows']} rows)?"):
            raise typer.Exit(1)
        store.drop(name)
    finally:
        factory.close()
    out.print(f"catalog {name} dropped ({entry['rows']} rows)", highlight=False)


@app.command("list")
@clean_errors
def catalog_list() -> None:
    """One line per loaded reference catalog: name, rows, version, load time, columns."""
    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    store = factory.refcats
    try:
        entries = store.list()
    finally:
        factory.close()
    if not entries:
        out.print("no reference catalogs loaded", highlight=False)
    for entry in entries:
        shape = entry.get("shape") or {}
        shaped = (f" shape: {shape['major']},{shape['minor'] or '-'},{shape['pa'] or '-'} "
                  f"({shape['axes']}s in {shape['unit']})") if shape.get("major") else ""
        motion = shape.get("motion")
        if motion:
            shaped += (f" motion: {motion['pmra']},{motion['pmdec']} (mas/yr, epoch "
                       f"J{motion['epoch_jyear']:g})")
        out.print(f"{entry['name']} {entry['rows']} rows v{entry['version']} "
                  f"{entry.get('kind', 'generic')} overlap {entry['overlap_deg'] * 60:g}' "
                  f"loaded {entry['loaded_at']}{shaped} columns: "
                  f"{','.join(c[0] for c in entry['columns'])}", highlight=False)
