"""Print the table of ``make chaos`` from the suite's JUnit XML: bad inputs and fuzz inputs."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(path: str, examples: int) -> int:
    cases = ET.parse(path).getroot().iter("testcase")
    bad_total = bad_ok = fuzz_targets = fuzz_crashed = 0
    for case in cases:
        failed = case.find("failure") is not None or case.find("error") is not None
        name = case.get("name", "")
        if "never_crash" in name:
            fuzz_targets += 1
            fuzz_crashed += failed
        elif name.startswith(("test_bad", "test_operator_bad")):
            bad_total += 1
            bad_ok += not failed
    print(f"{'bad inputs tried':<34}{bad_total:>10}")
    print(f"{'handled with a clear error':<34}{bad_ok:>10}")
    print(f"{'fuzz targets':<34}{fuzz_targets:>10}")
    print(f"{'fuzz inputs run (at least)':<34}{fuzz_targets * examples:>10,}")
    print(f"{'fuzz targets that crashed':<34}{fuzz_crashed:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
