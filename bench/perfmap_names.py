#!/usr/bin/env python3
"""perfmap_names.py PROFILE MAP: names the filters' compiled code in a callgrind profile.

Callgrind knows no symbols for code wasmtime compiled at run time and shows it as `???` at
bare addresses. Spindle started with SPINDLE_WASM_PERFMAP=1 writes a perf map
(/tmp/perf-<pid>.map: start, size and name of every compiled function, in hex); this rewrites
the profile's bare addresses to those names, in place, so that callgrind_annotate shows which
Wasm function each cost belongs to.
"""
import bisect
import re
import sys


def main(profile, perfmap):
    ranges = []
    with open(perfmap, errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) == 3:
                ranges.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
    ranges.sort()
    starts = [r[0] for r in ranges]

    def name_of(addr):
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < ranges[i][0] + ranges[i][1]:
            start, _, name = ranges[i]
            return f"wasm:{name}" + (f"+{addr - start:#x}" if addr != start else "")
        return None

    bare = re.compile(r"^(c?fn=\(\d+\) )(0x[0-9a-fA-F]+)$")
    named = 0
    with open(profile, errors="replace") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        m = bare.match(line.rstrip("\n"))
        if m:
            name = name_of(int(m.group(2), 16))
            if name:
                lines[i] = f"{m.group(1)}{name}\n"
                named += 1
    with open(profile, "w") as f:
        f.writelines(lines)
    print(f"named {named} compiled functions in {profile}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
