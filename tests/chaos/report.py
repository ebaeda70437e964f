"""Print the table of ``make chaos``: faults, security, load, bad inputs and fuzz inputs.

``python tests/chaos/report.py JUNIT_XML FUZZ_EXAMPLES [LEDGER]``: the JUnit XML of the run gives the
outcome of every test; the ledger (JSON lines that :func:`chaoslib.audit` appends, one per faulted
or loaded transfer) gives what each transfer did and what it left.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _row(label: str, value: object) -> None:
    text = f"{value:,}" if isinstance(value, int) else str(value)
    print(f"{label:<44}{text:>12}")


def main(path: str, examples: int, ledger: str | None = None) -> int:
    cases = list(ET.parse(path).getroot().iter("testcase"))
    bad_total = bad_ok = fuzz_targets = fuzz_crashed = fuzz_timed_out = 0
    sec_total = sec_ok = fault_tests = fault_failed = 0
    for case in cases:
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        name = case.get("name", "")
        module = case.get("classname", "")
        if "never_crash" in name:
            fuzz_targets += 1
            problem = case.find("failure") if case.find("failure") is not None else case.find("error")
            if failed and problem is not None and "Timeout" in (problem.get("message") or ""):
                fuzz_timed_out += 1  # ran out of time (pytest-timeout), not a crash of the parser
            else:
                fuzz_crashed += failed
        elif name.startswith(("test_bad", "test_operator_bad")):
            bad_total += 1
            bad_ok += not failed
        elif module.endswith("test_security") and not skipped:
            sec_total += 1
            sec_ok += not failed
        elif module.endswith(("test_faults", "test_load")) and not skipped:
            fault_tests += 1
            fault_failed += failed
    entries = []
    if ledger and Path(ledger).exists():
        entries = [json.loads(line) for line in Path(ledger).read_text().splitlines() if line.strip()]
    faults = [e for e in entries if e["fault"] != "load"]
    load = [e for e in entries if e["fault"] == "load"]
    clean = [e for e in entries if not e["lost_or_corrupt"] and not e["leaked"]]

    print("== faults (tests/chaos/test_faults.py)")
    _row("faults injected", sum(e["faults_injected"] for e in faults))
    _row("transfers completed byte-exact", sum(e["outcome"] == "completed" for e in faults if e in clean))
    _row(
        "transfers failed cleanly (clear error)", sum(e["outcome"] == "failed" for e in faults if e in clean)
    )
    _row("objects lost or corrupted (target 0)", sum(len(e["lost_or_corrupt"]) for e in entries))
    _row("resources leaked (target 0)", sum(len(e["leaked"]) for e in entries))
    _row("fault and load tests failed (target 0)", fault_failed)
    for e in faults:
        mark = "ok" if e in clean else "FAIL"
        print(f"   {e['backend']:<6}{e['fault'][:52]:<54}{e['outcome']:<10}{mark}")
    print("== load (tests/chaos/test_load.py)")
    _row("load tests", len(load))
    _row("transfers under load (DAG runs x datasets)", sum(e.get("transfers", 1) for e in load))
    _row("largest single transfer (objects)", max((e["objects"] for e in load), default=0))
    _row("objects sent byte-exact", sum(e["objects_written"] for e in load if e in clean))
    print("== security (tests/chaos/test_security.py)")
    _row("security checks run", sec_total)
    _row("passed", sec_ok)
    print("== bad inputs and fuzzing")
    _row("bad inputs tried", bad_total)
    _row("handled with a clear error", bad_ok)
    _row("fuzz targets", fuzz_targets)
    _row("fuzz inputs run to the end (at least)", (fuzz_targets - fuzz_crashed - fuzz_timed_out) * examples)
    _row("fuzz targets that crashed", fuzz_crashed)
    if fuzz_timed_out:
        _row("fuzz targets that ran out of time", fuzz_timed_out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
