#!/usr/bin/env python3
"""Render the two attack corpora as access logs, split into a tuning part and a held-out part.

usage: detection_corpora.py render DATA_DIR OUT_DIR
       detection_corpora.py report OUT_DIR ROOST_CRS.jsonl ROOST_PAYLOADS.jsonl [MODSEC_CRS.rules.tsv MODSEC_PAYLOADS.rules.tsv]

The split is by file, fixed, and the same on every machine (see SPLIT below): rules are tuned on
the tuning part only; the held-out part says whether they catch the attack class or only the
examples they were written against.

- CRS regression tests (DATA_DIR/crs-tests): rendered by ../shared/peers/crs_render.py (one client
  per test, three identical requests, status 200), then split by the test's YAML file.
- Payload lists (DATA_DIR/payloads): one client per payload line, three requests answered 200 with
  the payload URL-encoded once as a query-string value: `GET /search?q=<payload> HTTP/1.1`. A line
  with nothing but letters, digits, spaces, dots, dashes and underscores is not an attack on its
  own (an LDAP attribute name, a bare number): it is rendered and counted apart, as "plain".

OUT_DIR gets crs.log, crs.truth.tsv, payloads.log, payloads.truth.tsv; each truth line is
`ip  family  file  part  kind` (part: tuning or held-out; kind: attack or plain).
"""
import collections, datetime, ipaddress, json, os, re, subprocess, sys, urllib.parse

SPLIT = """Within each family (a CRS category folder; a payload file's name up to its first '-'),
files sorted by name: the 1st, 3rd, 5th... are the tuning part, the 2nd, 4th, 6th... held out.
A family of one file is tuning only."""

PLAIN = re.compile(r"^[A-Za-z0-9_ .\-]*$")
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def parts(files):
    """File name -> 'tuning' or 'held-out', per SPLIT."""
    by_family = collections.defaultdict(list)
    for fam, f in files:
        by_family[fam].append(f)
    out = {}
    for fam, fs in by_family.items():
        for i, f in enumerate(sorted(fs)):
            out[f] = "tuning" if i % 2 == 0 else "held-out"
    return out


def stamp(n):
    t = datetime.datetime(2026, 3, 2, 10, 0, 0) + datetime.timedelta(seconds=n)
    return "%02d/%s/%d:%02d:%02d:%02d +0000" % (t.day, MONTHS[t.month - 1], t.year, t.hour, t.minute, t.second)


def render(data, out):
    os.makedirs(out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    peers = os.environ.get("PEERS", os.path.join(here, "..", "..", "shared", "peers"))
    crs = os.path.join(data, "crs-tests")
    subprocess.run([sys.executable, os.path.join(peers, "crs_render.py"), crs,
                    os.path.join(out, "crs.log"), os.path.join(out, "crs.raw.tsv")], check=True)
    # which YAML file each rendered test came from: crs_render names tests RULE-TESTID, the file RULE.yaml
    files = []
    for root, _, fs in os.walk(crs):
        for f in fs:
            if f.endswith(".yaml"):
                files.append((os.path.basename(root), f))
    part = parts(files)
    with open(os.path.join(out, "crs.truth.tsv"), "w") as o:
        for line in open(os.path.join(out, "crs.raw.tsv")):
            ip, folder, test, *_ = line.rstrip("\n").split("\t")
            f = test.rsplit("-", 1)[0] + ".yaml"
            fam = folder.split("-")[1]
            o.write("\t".join([ip, fam, f, part[f], "attack"]) + "\n")

    pl = os.path.join(data, "payloads")
    names = sorted(f for f in os.listdir(pl) if f not in ("LICENSE", "README.md"))
    part = parts([(f.split("-")[0], f) for f in names])
    first = ipaddress.ip_address("10.64.0.1")
    n = 0
    with open(os.path.join(out, "payloads.log"), "w") as log, open(os.path.join(out, "payloads.truth.tsv"), "w") as truth:
        for f in names:
            fam = f.split("-")[0]
            for raw in open(os.path.join(pl, f), encoding="utf-8", errors="replace"):
                p = raw.rstrip("\r\n")
                if not p.strip():
                    continue
                ip = str(first + n)
                q = urllib.parse.quote(p, safe="")
                ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
                for k in range(3):
                    log.write('%s - - [%s] "GET /search?q=%s HTTP/1.1" 200 512 "-" "%s"\n' % (ip, stamp(n * 3 + k), q, ua))
                truth.write("\t".join([ip, fam, f, part[f], "plain" if PLAIN.match(p) else "attack"]) + "\n")
                n += 1
    print("%d payload lines rendered from %d files" % (n, len(names)))


def flagged_roost(p):
    return {json.loads(l)["ip"] for l in open(p) if json.loads(l)["worst"] != "good"}


def flagged_modsec(p):
    out = set()
    for line in open(p):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 4 and f[3] == "403":
            out.add(f[1])
    return out


def table(title, truth_p, tools):
    rows = [l.rstrip("\n").split("\t") for l in open(truth_p)]
    print("\n== %s" % title)
    head = "%-22s" % "family"
    for part in ("tuning", "held-out"):
        head += " | %-7s" % (part + " n")
        for name, _ in tools:
            head += " %14s" % name
    print(head)

    def cell(sel, flagged):
        n = len(sel)
        h = sum(1 for r in sel if r[0] in flagged)
        return "%6d %6.1f%%" % (h, 100.0 * h / n) if n else "%14s" % "-"

    fams = sorted({r[1] for r in rows})
    for fam in fams + ["all"]:
        line = "%-22s" % fam
        for part in ("tuning", "held-out"):
            sel = [r for r in rows if (fam == "all" or r[1] == fam) and r[3] == part and r[4] == "attack"]
            line += " | %-7d" % len(sel)
            for _, fl in tools:
                line += " " + cell(sel, fl)
        print(line)
    plain = [r for r in rows if r[4] == "plain"]
    if plain:
        line = "%-22s" % "plain (not attacks)"
        for part in ("tuning", "held-out"):
            sel = [r for r in plain if r[3] == part]
            line += " | %-7d" % len(sel)
            for _, fl in tools:
                line += " " + cell(sel, fl)
        print(line)


def report(out, roost_crs, roost_pl, ms_crs=None, ms_pl=None):
    print("split: " + " ".join(SPLIT.split()))
    tools = [("roost", flagged_roost(roost_crs))]
    if ms_crs:
        tools.append(("ModSec+CRS", flagged_modsec(ms_crs)))
    table("CRS regression tests, attacks flagged", os.path.join(out, "crs.truth.tsv"), tools)
    tools = [("roost", flagged_roost(roost_pl))]
    if ms_pl:
        tools.append(("ModSec+CRS", flagged_modsec(ms_pl)))
    table("payload lists (GET /search?q=<payload>), lines flagged", os.path.join(out, "payloads.truth.tsv"), tools)


if __name__ == "__main__":
    if sys.argv[1] == "render":
        render(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "report":
        report(*sys.argv[2:])
    else:
        sys.exit(__doc__)
