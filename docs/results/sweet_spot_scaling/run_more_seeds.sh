#!/usr/bin/env bash
# Two more training seeds (3, 4) for the cells where sweet_spot and max_min build different
# pairs (N = 16 and N = 32), run in a later session (2026-12-02) after the 3-seed table was
# written: the 3-seed seed interval at N = 32 touched 0. Both N and both arms get the seeds, and
# the 5-seed table reports every seed run; nothing is dropped. Samples come from the cache.
# Then: python docs/results/sweet_spot_scaling/compare_arms.py OUT/all (run.sh's links plus these).
set -euo pipefail
OUT=${OUT:-multirun/sweet_spot_scaling}
for arm in max_min sweet_spot; do
  sweetspot -m experiment=sweet_spot_scaling logger=csv train_seed=3,4 selection=$arm \
    sampler.use_n=16,32 hydra.sweep.dir=$OUT/${arm}_seed34
done
for sweep in "$OUT"/max_min_seed34 "$OUT"/sweet_spot_seed34; do
  for job in "$sweep"/[0-9]*; do ln -sfn "$(realpath "$job")" "$OUT/all/$(basename "$sweep")-$(basename "$job")"; done
done
