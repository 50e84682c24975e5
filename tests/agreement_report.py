"""The accept/reject agreement of every model a test run exported (not a test).

Every `toolkit export` writes <name>.report.json beside its files; its `calibration` section holds, per twin
and engine, the share of validation images on which it takes the FP32 file's accept/reject decision
(docs/export.md). Run the tests that export with a temp folder that pytest keeps, then list them:

    python -m pytest tests/export tests/test_docs.py -m "slow or not slow" --basetemp /tmp/pt
    python tests/agreement_report.py /tmp/pt            # a markdown table; --json for the records

Exports whose calibration was skipped (under 20 validation images) are counted, not listed.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolkit.export.calibrate import CONFIDENCE, MIN_AGREEMENT  # noqa: E402


def export_reports(root: str) -> list:
    """Every <name>.report.json under `root` that an export wrote (it has a `files` and a `calibration` key)."""
    found = []
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            if not name.endswith(".report.json"):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as fh:
                    report = json.load(fh)
            except (OSError, ValueError):
                continue
            if isinstance(report, dict) and "files" in report and "calibration" in report:
                found.append((os.path.relpath(path, root), report))
    return sorted(found)


def rows(reports: list) -> tuple:
    """(one row per calibrated export and engine/twin, the number of exports whose calibration was skipped)."""
    out, skipped = [], 0
    for path, report in reports:
        cal = report["calibration"] or {}
        if "agreement" not in cal:
            skipped += 1
            continue
        bounds = cal.get("disagreement_lower_bound", {})
        for name, share in sorted(cal["agreement"].items()):
            out.append({"export": path, "arch": report.get("arch"), "n": cal["n"], "against": name,
                        "agreement": share, "differ": int(round((1 - share) * cal["n"])),
                        "lower_bound": bounds.get(name)})
    return out, skipped


def table(records: list, skipped: int) -> str:
    lines = ["| export (under the temp folder) | arch | validation images | twin / engine | agreement | differ | "
             f"disagreement, {CONFIDENCE * 100:g}% lower bound |", "|---|---|---|---|---|---|---|"]
    for r in records:
        bound = "" if r["lower_bound"] is None else f"{r['lower_bound'] * 100:.2f}%"
        lines.append(f"| {r['export']} | {r['arch']} | {r['n']} | {r['against']} | {r['agreement'] * 100:.1f}% | "
                     f"{r['differ']} | {bound} |")
    below = [r for r in records if r["agreement"] < MIN_AGREEMENT]
    lines += ["", f"{len({r['export'] for r in records})} calibrated exports, {len(records)} comparisons, "
              f"{len(below)} below {MIN_AGREEMENT * 100:g}% seen; {skipped} exports with calibration skipped "
              "(under 20 validation images)"]
    if records:
        lines.append(f"lowest agreement {min(r['agreement'] for r in records) * 100:.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder the tests ran in (pytest --basetemp)")
    parser.add_argument("--json", action="store_true", help="the records as JSON")
    args = parser.parse_args(argv)
    records, skipped = rows(export_reports(args.root))
    print(json.dumps({"records": records, "skipped": skipped}, indent=2) if args.json else table(records, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
