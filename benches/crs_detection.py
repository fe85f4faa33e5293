#!/usr/bin/env python3
"""Detection per CRS category: which clients of a rendered CRS log roost flagged.

usage: crs_detection.py CRS.truth.tsv ROOST_REPLAY_OUTPUT.jsonl [MODSEC.rules.tsv]
A client counts as detected when roost flagged it (worst verdict dubious or bad). With a
ModSecurity replay's per-request rule file, its IP-level detection is shown beside."""
import collections, json, sys

truth_p, roost_p = sys.argv[1], sys.argv[2]
truth = {}
for line in open(truth_p):
    ip, cat, *_ = line.rstrip("\n").split("\t")
    truth[ip] = cat.split("-")[1]
flagged = {json.loads(l)["ip"] for l in open(roost_p) if json.loads(l)["worst"] != "good"}
modsec = None
if len(sys.argv) > 3:
    modsec = set()
    # modsec-replay.sh's NAME.rules.tsv: line, ip, method, status, rule ids, uri
    for line in open(sys.argv[3]):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 4 and parts[3] == "403":
            modsec.add(parts[1])
tot = collections.Counter(truth.values())
hit = collections.Counter(c for ip, c in truth.items() if ip in flagged)
ms = collections.Counter(c for ip, c in truth.items() if modsec is not None and ip in modsec)
print(f"{'CRS category':<8}{'tests':>7}{'roost':>14}" + (f"{'ModSec+CRS':>14}" if modsec is not None else ""))
for c in sorted(tot):
    row = f"{c:<8}{tot[c]:>7}{hit[c]:>7} {100*hit[c]/tot[c]:>5.1f}%"
    if modsec is not None:
        row += f"{ms[c]:>7} {100*ms[c]/tot[c]:>5.1f}%"
    print(row)
n, h = sum(tot.values()), sum(hit.values())
row = f"{'all':<8}{n:>7}{h:>7} {100*h/n:>5.1f}%"
if modsec is not None:
    m = sum(ms.values()); row += f"{m:>7} {100*m/n:>5.1f}%"
print(row)
