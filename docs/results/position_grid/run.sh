#!/usr/bin/env bash
# The position_grid study as run for docs/results/position_grid (2-core CPU, one training seed).
# Its samples are sweet_spot_scaling's (the first 16 of 32 per prompt), already in the cache.
# max/min and max/mu-2sigma at N = 16 with train_seed 0 are exactly the max_min and sweet_spot
# jobs of sweet_spot_scaling at N = 16, seed 0 (same pairs, trainer, loss and seed; CPU training
# is bitwise deterministic), so those two cells are taken from that study, not retrained.
# The other 19 pairs, chosen = max first:
# PAIRS and GRID run part of it into another sweep folder (how the last 5 were finished:
# PAIRS=mu/mu-2sigma,mu/min,mu-sigma/mu-2sigma,mu-sigma/min,mu-2sigma/min GRID=grid_rest).
set -euo pipefail
OUT=${OUT:-multirun/position_grid}
GRID=${GRID:-grid}
PAIRS=${PAIRS:-max/mu+2sigma,max/mu+sigma,max/mu,max/mu-sigma,mu+2sigma/mu+sigma,mu+2sigma/mu,mu+2sigma/mu-sigma,mu+2sigma/mu-2sigma,mu+2sigma/min,mu+sigma/mu,mu+sigma/mu-sigma,mu+sigma/mu-2sigma,mu+sigma/min,mu/mu-sigma,mu/mu-2sigma,mu/min,mu-sigma/mu-2sigma,mu-sigma/min,mu-2sigma/min}
sweetspot -m experiment=position_grid logger=csv train_seed=0 "selection.pair=$PAIRS" \
  hydra.sweep.dir=$OUT/$GRID
