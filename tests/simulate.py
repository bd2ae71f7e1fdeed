"""Run the Raft simulator over many seeds and print every failing seed.

    python -m tests.simulate --seeds 2000 --steps 3000 [--nodes 5] [--start 0]
    python -m tests.simulate --seed 1234 --steps 3000 --nodes 5     # replay one

A failing seed prints its error, the command that replays it and the last events.
The exit status is 1 when any seed fails.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim import SimConfig, SimResult, run_seed


def _report_failure(res: SimResult, trace_lines: int) -> None:
    print(f"FAIL seed={res.seed} nodes={res.nodes}: {res.error}", flush=True)
    print(f"  replay: {res.replay_command()}")
    for line in res.trace[-trace_lines:]:
        print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simulate", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="number of seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed of the range")
    ap.add_argument("--seed", type=int, default=None, help="run this one seed (replay)")
    ap.add_argument("--steps", type=int, default=3000, help="chaos steps per seed")
    ap.add_argument("--nodes", type=int, default=0, help="3 or 5 (default: drawn per seed)")
    ap.add_argument("--trace", type=int, default=30, help="events shown for a failing seed")
    ap.add_argument("--max-failures", type=int, default=20, help="stop after this many")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    args = ap.parse_args(argv)

    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    failures: list[SimResult] = []
    t0 = time.perf_counter()
    done = 0
    totals = {"committed": 0, "crashes": 0, "snapshots": 0, "conf": 0, "reads": 0}
    worst_liveness = 0
    for seed in seeds:
        res = run_seed(
            SimConfig(seed=seed, steps=args.steps, nodes=args.nodes, trace_len=max(args.trace, 60))
        )
        done += 1
        totals["committed"] += res.committed
        totals["crashes"] += res.crashes
        totals["snapshots"] += res.snapshots_sent
        totals["conf"] += res.conf_changes
        totals["reads"] += res.reads
        if res.ok:
            worst_liveness = max(worst_liveness, res.liveness_ticks)
        if args.verbose or args.seed is not None:
            print(
                f"seed={seed} nodes={res.nodes} ok={res.ok} committed={res.committed} "
                f"acked={res.acknowledged}/{res.proposed} terms_led={res.leaders} "
                f"crashes={res.crashes} snapshots_sent={res.snapshots_sent} "
                f"conf_changes={res.conf_changes} reads={res.reads} "
                f"liveness_ticks={res.liveness_ticks}",
                flush=True,
            )
        if not res.ok:
            failures.append(res)
            _report_failure(res, args.trace)
            if len(failures) >= args.max_failures:
                print(f"stopping after {len(failures)} failures")
                break
        elif done % 100 == 0:
            print(
                f"... {done} seeds, {len(failures)} failing, {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    elapsed = time.perf_counter() - t0
    print(
        f"{done} seeds x {args.steps} steps: {len(failures)} failing in {elapsed:.1f}s "
        f"(committed {totals['committed']}, crashes {totals['crashes']}, snapshots sent "
        f"{totals['snapshots']}, conf changes {totals['conf']}, reads {totals['reads']}; "
        f"slowest recovery after healing: {worst_liveness} ticks)"
    )
    if failures:
        print("failing seeds: " + " ".join(str(r.seed) for r in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
