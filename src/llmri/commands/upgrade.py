"""``llmri upgrade-store STORE``: give a store written by an older llmri what the current format adds
(every array's ``dimension_names``, so xarray opens it), in place and crash-safely."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "upgrade-store", help="add dimension names to a store written by an older llmri", description=__doc__
    )
    p.add_argument("store", help="store path or URL")
    p.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    return p


def run(args: argparse.Namespace) -> int:
    from ..store.zarr.upgrade import upgrade_store

    report = upgrade_store(args.store, dry_run=args.dry_run)
    verb = "would upgrade" if args.dry_run else "upgraded"
    for sid, files in report.upgraded.items():
        print(f"{verb} {sid} ({len(files)} files)")
    if report.current:
        print(f"{len(report.current)} sessions already current")
    for line in report.refused + report.unknown:
        print(f"llmri upgrade-store: {line}", file=sys.stderr)
    return 1 if report.refused or report.unknown else 0
