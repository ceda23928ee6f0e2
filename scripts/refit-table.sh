#!/usr/bin/env bash
# The re-fit table of docs/CLI.md: the mean and worst reconstruction error over the seven
# linears of the default synthetic layer, per method and sparsity, without and with PERP's
# re-fit. Usage: scripts/refit-table.sh PRUNEBENCH_BINARY [BACKEND]
set -euo pipefail
bin=${1:?usage: $0 PRUNEBENCH_BINARY [BACKEND]}
backend=${2:-cpu}
echo "| method | sparsity | re-fit | mean error | worst error |"
echo "|---|---|---|---|---|"
for sp in 0.5 2:4; do
    for m in magnitude wanda sparsegpt; do
        for r in none norm,masklora:16; do
            "$bin" prune --backend "$backend" --method "$m" --sparsity "$sp" --refit "$r" --json |
                python3 -c "
import json, sys
ls = json.load(sys.stdin)['linears']
e = [l['recon_error'] for l in ls]
print('| $m | $sp | $r | %.5f | %.5f |' % (sum(e) / len(e), max(e)))"
        done
    done
done
