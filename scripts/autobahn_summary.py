#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient report.

Usage: autobahn_summary.py INDEX_JSON OUT_SUMMARY

INDEX_JSON is the index.json that `wstest -m fuzzingclient` writes into its outdir. A case passes
only when both `behavior` and `behaviorClose` are OK, NON-STRICT or INFORMATIONAL. Every other
value (UNIMPLEMENTED, FAILED, WRONG CODE, UNCLEAN, FAILED BY CLIENT, ...) is a failure:
UNIMPLEMENTED in groups 12 and 13 means permessage-deflate was not negotiated, and uringws runs
the suite with compression on.

The summary is printed and written to OUT_SUMMARY. It contains no timestamps, durations or ports,
so it is stable across runs with the same results. Exit status: 0 if every case passed, 1 if any
case failed (or the report has no cases), 2 on a usage or input error.
"""

import os
import json
import sys
from collections import Counter

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
# Fixed column order for the outcome counts; anything else follows alphabetically.
OUTCOME_ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED",
                 "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"]


def case_key(case_id):
    """Sort key for a dotted case id: numerically by each component ("1.1.10" after "1.1.9")."""
    key = []
    for part in case_id.split("."):
        try:
            key.append((0, int(part), ""))
        except ValueError:
            key.append((1, 0, part))
    return tuple(key)


def group_of(case_id):
    head = case_id.split(".", 1)[0]
    try:
        return int(head)
    except ValueError:
        return head


def group_key(group):
    return (0, group, "") if isinstance(group, int) else (1, 0, str(group))


def outcome_key(name):
    if name in OUTCOME_ORDER:
        return (OUTCOME_ORDER.index(name), "")
    return (len(OUTCOME_ORDER), name)


def case_passes(group, behavior, behavior_close):
    return behavior in PASSING and behavior_close in PASSING


def format_counts(counter):
    return ", ".join("%s=%d" % (name, counter[name]) for name in sorted(counter, key=outcome_key))


def summarise_agent(agent, cases):
    """Return (lines, failed_count) for one agent's results."""
    groups = {}
    failures = []
    for case_id in sorted(cases, key=case_key):
        result = cases[case_id]
        if not isinstance(result, dict):
            raise ValueError("case %s of agent %s is not an object" % (case_id, agent))
        behavior = str(result.get("behavior", "MISSING"))
        behavior_close = str(result.get("behaviorClose", "MISSING"))
        group = group_of(case_id)
        g = groups.setdefault(group, {"cases": 0, "pass": 0, "fail": 0,
                                      "behavior": Counter(), "close": Counter()})
        g["cases"] += 1
        g["behavior"][behavior] += 1
        g["close"][behavior_close] += 1
        if case_passes(group, behavior, behavior_close):
            g["pass"] += 1
        else:
            g["fail"] += 1
            failures.append((case_id, behavior, behavior_close))

    rows = [("group", "cases", "pass", "fail", "behavior", "behaviorClose")]
    total = {"cases": 0, "pass": 0, "fail": 0, "behavior": Counter(), "close": Counter()}
    for group in sorted(groups, key=group_key):
        g = groups[group]
        rows.append((str(group), str(g["cases"]), str(g["pass"]), str(g["fail"]),
                      format_counts(g["behavior"]), format_counts(g["close"])))
        for k in ("cases", "pass", "fail"):
            total[k] += g[k]
        total["behavior"].update(g["behavior"])
        total["close"].update(g["close"])
    rows.append(("total", str(total["cases"]), str(total["pass"]), str(total["fail"]),
                 format_counts(total["behavior"]), format_counts(total["close"])))

    # group left-aligned, counts right-aligned, the two outcome columns left-aligned.
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["agent: %s" % agent, ""]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [row[i].rjust(widths[i]) for i in (1, 2, 3)]
        cells += [row[4].ljust(widths[4]), row[5]]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    if failures:
        lines.append("failing cases (%d):" % len(failures))
        width = max(len(case_id) for case_id, _, _ in failures)
        for case_id, behavior, behavior_close in failures:
            lines.append("  %s  behavior=%s  behaviorClose=%s"
                         % (case_id.ljust(width), behavior, behavior_close))
    else:
        lines.append("failing cases: none")
    if total["cases"] == 0:
        lines.append("no cases in the report")
    failed = total["fail"] + (1 if total["cases"] == 0 else 0)
    return lines, failed


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: %s INDEX_JSON OUT_SUMMARY\n" % argv[0])
        return 2
    index_path, out_path = argv[1], argv[2]
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        sys.stderr.write("cannot read %s: %s\n" % (index_path, e))
        return 2
    if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.values()):
        sys.stderr.write("%s is not an Autobahn fuzzingclient index.json\n" % index_path)
        return 2

    lines = [
        "Autobahn|Testsuite %s summary" % os.environ.get("UWS_AUTOBAHN_MODE", "fuzzingclient (server role)"),
        "A case passes when behavior and behaviorClose are both OK, NON-STRICT or INFORMATIONAL",
        "(UNIMPLEMENTED, in groups 12 and 13 when permessage-deflate is declined, fails).",
        "",
    ]
    failed = 0
    if not index:
        lines.append("no agents in the report")
        failed = 1
    try:
        for agent in sorted(index):
            agent_lines, agent_failed = summarise_agent(agent, index[agent])
            lines.extend(agent_lines)
            lines.append("")
            failed += agent_failed
    except ValueError as e:
        sys.stderr.write("%s: %s\n" % (index_path, e))
        return 2
    while lines and lines[-1] == "":
        lines.pop()
    lines.append("")
    lines.append("RESULT: %s" % ("FAIL" if failed else "PASS"))
    text = "\n".join(lines) + "\n"

    sys.stdout.write(text)
    try:
        with open(out_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as e:
        sys.stderr.write("cannot write %s: %s\n" % (out_path, e))
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
