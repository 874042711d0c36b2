"""Compare per-case verdicts of two conformance JSON reports (by case id)."""
import json, sys
a = {c["id"]: c["verdict"] for c in json.load(open(sys.argv[1]))["cases"]}
b = {c["id"]: c["verdict"] for c in json.load(open(sys.argv[2]))["cases"]}
common = a.keys() & b.keys()
changed = sorted(i for i in common if a[i] != b[i])
print(f"{sys.argv[1]} vs {sys.argv[2]}: before {len(a)} cases, after {len(b)}; "
      f"common {len(common)}, same verdict {len(common) - len(changed)}, changed {len(changed)}; "
      f"only before {len(a.keys() - b.keys())}, only after {len(b.keys() - a.keys())}")
for i in changed[:20]:
    print("  changed:", i, a[i], "->", b[i])
for i in sorted(a.keys() - b.keys())[:20]:
    print("  only before:", i)
