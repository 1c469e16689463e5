#!/usr/bin/env python3
"""Generate docker/seccomp-io_uring.json: a container runtime's default seccomp profile plus io_uring.

uringws does all its socket I/O through io_uring (tokio-uring). Docker (since Engine 25) and
podman block the three io_uring system calls in their default seccomp profiles, so the server
cannot start there (`uringws needs io_uring, but it is unavailable: ...`). This script takes a
default profile, unchanged, and

  * removes io_uring_setup, io_uring_enter and io_uring_register from every existing syscalls
    entry that names them (an entry left with no names is dropped), so no rule contradicts the
    new one;
  * appends exactly one entry that allows those three calls (SCMP_ACT_ALLOW).

Everything else (default action, errno, architectures, every other rule, key order) is kept as
in the source, and the output is written with indent=2 and a final newline, so regenerating from
a newer default profile gives a diff that shows only what upstream changed.

Usage:
    docker/gen-seccomp.py [SOURCE] [-o OUTPUT]

SOURCE defaults to /usr/share/containers/seccomp.json (Debian package
golang-github-containers-common, installed with podman; the same JSON format Docker reads).
Docker's own default is moby's profiles/seccomp/default.json, which can be given instead.
OUTPUT defaults to seccomp-io_uring.json beside this script; "-" writes to stdout.
"""

import argparse
import json
import os
import sys

IO_URING_SYSCALLS = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
DEFAULT_SOURCE = "/usr/share/containers/seccomp.json"
COMMENT = "uringws: io_uring for tokio-uring (added by docker/gen-seccomp.py)"


def new_entry(template):
    """The allow entry, with the same optional keys the source's entries carry (for a uniform file)."""
    entry = {"names": list(IO_URING_SYSCALLS), "action": "SCMP_ACT_ALLOW"}
    if template is not None:
        for key in template:
            if key in entry:
                continue
            if key == "args":
                entry["args"] = []
            elif key == "comment":
                entry["comment"] = COMMENT
            elif key in ("includes", "excludes"):
                entry[key] = {}
            # errnoRet/errno, minKernel etc. belong to other rules: not copied.
    if "comment" not in entry:
        entry["comment"] = COMMENT
    return entry


def transform(profile):
    if not isinstance(profile, dict) or not isinstance(profile.get("syscalls"), list):
        raise ValueError("not a seccomp profile: no top-level \"syscalls\" list")
    wanted = set(IO_URING_SYSCALLS)
    syscalls = []
    removed = []
    template = None
    for entry in profile["syscalls"]:
        if template is None and entry.get("action") == "SCMP_ACT_ALLOW" and "names" in entry:
            template = entry
        # Old single-name format ("name": "io_uring_setup").
        if entry.get("name") in wanted:
            removed.append((entry["name"], entry.get("action")))
            continue
        names = entry.get("names")
        if isinstance(names, list) and wanted.intersection(names):
            kept = [n for n in names if n not in wanted]
            removed.extend((n, entry.get("action")) for n in names if n in wanted)
            if not kept:
                continue
            entry = dict(entry)  # keeps key order
            entry["names"] = kept
        syscalls.append(entry)
    syscalls.append(new_entry(template))
    out = dict(profile)  # keeps key order
    out["syscalls"] = syscalls
    return out, removed


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", default=DEFAULT_SOURCE,
                    help="default seccomp profile to start from (default: %(default)s)")
    ap.add_argument("-o", "--output", default=os.path.join(here, "seccomp-io_uring.json"),
                    help="where to write the profile, '-' for stdout (default: %(default)s)")
    args = ap.parse_args(argv)

    try:
        with open(args.source, encoding="utf-8") as f:
            profile = json.load(f)
    except FileNotFoundError:
        sys.exit(f"gen-seccomp: {args.source} not found (apt-get install "
                 "golang-github-containers-common, or give a profile path)")
    try:
        out, removed = transform(profile)
    except ValueError as e:
        sys.exit(f"gen-seccomp: {args.source}: {e}")

    text = json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    for name, action in removed:
        print(f"gen-seccomp: removed {name} from an existing {action} rule", file=sys.stderr)
    if args.output != "-":
        print(f"gen-seccomp: wrote {args.output} from {args.source} "
              f"({len(out['syscalls'])} rules; allowed {', '.join(IO_URING_SYSCALLS)})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
