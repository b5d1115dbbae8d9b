#!/usr/bin/env python3
"""Totals over meson's test logs: one line "N passed, N failed[, N skipped]".

Counts TAP subtests where a test speaks TAP (each g_test case is one result), each
"RESULT name PASS|FAIL" line of the QEMU suite, and whole tests otherwise, so the figure says how
many behaviours were checked."""
import json
import re
import sys
from pathlib import Path

passed = failed = skipped = 0
for build in sys.argv[1:]:
    # `meson test --setup NAME` writes testlog-NAME.json.
    logs = sorted((Path(build) / "meson-logs").glob("testlog*.json"))
    if not logs:
        print(f"{build}: no test log", file=sys.stderr)
        failed += 1
        continue
    lines = [line for log in logs for line in log.read_text().splitlines()]
    for line in lines:
        entry = json.loads(line)
        result = entry.get("result")
        out = entry.get("stdout") or ""
        tap = [l for l in out.splitlines() if re.match(r"^(not )?ok \d+", l)]
        scenarios = [l for l in out.splitlines() if re.match(r"^RESULT \S+ (PASS|FAIL)", l)]
        if scenarios:
            passed += sum(1 for l in scenarios if l.split()[2] == "PASS")
            failed += sum(1 for l in scenarios if l.split()[2] == "FAIL")
            # A timeout or the kernel's complaints fail the run with every scenario passed.
            if result not in ("OK", "SKIP", "EXPECTEDFAIL") and all(l.split()[2] == "PASS" for l in scenarios):
                failed += 1
        elif tap:
            for l in tap:
                if re.search(r"#\s*skip", l, re.I):
                    skipped += 1
                elif l.startswith("not ok") and not re.search(r"#\s*todo", l, re.I):
                    failed += 1
                else:
                    passed += 1
            # A crash after the last ok still fails the test.
            if result not in ("OK", "SKIP", "EXPECTEDFAIL") and not any(l.startswith("not ok") for l in tap):
                failed += 1
        elif result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
