#!/usr/bin/env python3
"""Who calls a function, and what those calls cost, in a callgrind profile.

Reads one callgrind output file (for example one kept by
`CALLGRIND_KEEP=DIR scripts/instructions-per-request.sh`) and prints, for every caller of the
functions whose name matches PATTERN (a regular expression), the inclusive instructions of
those calls and the number of calls, both divided by N (the requests in the profile).

Usage: scripts/callgrind-callers.py PROFILE PATTERN [N]
Example: scripts/callgrind-callers.py /tmp/cg/gatehouse-plain-logoff-1 memcpy 2000
"""

import collections
import re
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, pattern = sys.argv[1], re.compile(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ref = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    names, caller, target, pending = {}, "", None, None
    cost, calls = collections.Counter(), collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            m = ref.match(line)
            if m:
                kind, i, name = m.groups()
                if name:
                    names[i] = name.strip()
                if kind == "fn":
                    caller = names.get(i, "")
                else:
                    target = names.get(i, "")
                continue
            if line.startswith("calls=") and target is not None:
                pending = int(line.split()[0][6:])
                continue
            if pending is not None:
                # The line after `calls=` holds the call's position and inclusive cost.
                if pattern.search(target):
                    cost[caller] += int(line.split()[-1])
                    calls[caller] += pending
                pending, target = None, None
    for who, c in cost.most_common(25):
        print(f"{c / n:10.0f} instr {calls[who] / n:7.2f} calls  {who[:160]}")


if __name__ == "__main__":
    main()
