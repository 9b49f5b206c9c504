#!/usr/bin/env python3
"""CPU time per debit from the kernel's own accounting (/proc/<pid>/stat).

  cpu.py sample OUT DB_ARGS... -- PID...   one line a second: time, ticks of each pid group, ledger id
  cpu.py window OUT SECONDS                µs per debit over the last SECONDS of load, as JSON

Pid groups are comma-separated (the service's instances; MariaDB; the Redis servers:
one, or every node of a cluster, replicas included). The ledger's highest
entry id counts debits (every debit writes one entry), read with an O(1) query.
"""
import json, os, subprocess, sys, time

TICK = os.sysconf("SC_CLK_TCK")


def ticks(group):
    total = 0
    for pid in group.split(","):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
        except (OSError, IndexError, ValueError):
            pass
    return total


def sample(out, db_args, groups):
    query = ["mariadb", *db_args, "-N", "-e", "SELECT COALESCE(MAX(entry_id), 0) FROM ledger_entries"]
    with open(out, "w") as f:
        while True:
            entries = subprocess.run(query, capture_output=True, text=True).stdout.strip() or "0"
            f.write("\t".join([f"{time.monotonic():.3f}", *(str(ticks(g)) for g in groups), entries]) + "\n")
            f.flush()
            time.sleep(1)


def window(out, measured):
    """The last `measured` seconds in which debits were written: the measured part, after
    the set-up (which writes ledger entries of its own: top-ups) and the warm-up."""
    rows = [list(map(float, line.split("\t"))) for line in open(out) if line.strip()]
    moving = [i for i in range(1, len(rows)) if rows[i][-1] > rows[i - 1][-1]]
    if not moving:
        return {}
    end = rows[moving[-1]]
    start = next((r for r in rows if r[0] >= end[0] - measured), rows[0])
    debits = end[-1] - start[-1]
    if debits <= 0:
        return {}
    per = lambda i: (end[i] - start[i]) / TICK * 1e6 / debits
    report = {"serviceCpuUsPerDebit": per(1), "dbCpuUsPerDebit": per(2), "cpuWindowDebits": int(debits),
              "cpuWindowSeconds": round(end[0] - start[0], 1)}
    if len(end) > 4:
        report["redisCpuUsPerDebit"] = per(3)
    return report


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        split = sys.argv.index("--")
        sample(sys.argv[2], sys.argv[3:split], sys.argv[split + 1:])
    else:
        print(json.dumps(window(sys.argv[2], float(sys.argv[3]))))
