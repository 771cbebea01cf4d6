"""Launchers and concurrent jobs: a submitit multirun on one machine, two jobs racing for one
uncached stage (the stage cache's lock makes one compute it and the other reuse it), a failing
job that must not take the sweep down with it, and the SLURM preset's batch script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

from sweetspot.config import config_dir
from sweetspot.report import collect

SWEETSPOT = [sys.executable, "-m", "sweetspot"]
TINY = ["experiment=tiny_study"]  # the tiny model, trimmed for several jobs at once
TIMEOUT_S = 900


def env_with_cache(cache: Path) -> dict[str, str]:
    return {**os.environ, "SWEETSPOT_CACHE": str(cache)}


def local_sweep(tmp_path: Path, sweep_arg: str) -> Path:
    """Run a two-job multirun through the submitit_local launcher; return the sweep folder."""
    sweep = tmp_path / "sweep"
    cmd = [*SWEETSPOT, "-m", "hydra/launcher=local", *TINY, sweep_arg, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, env=env_with_cache(tmp_path / "cache"), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def test_submitit_local_multirun_and_report(tmp_path: Path) -> None:
    sweep = local_sweep(tmp_path, "selection=sweet_spot,max_min")
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit, not in-process
    (sweep / "report.md").unlink()  # written by the sweep's callback; rebuild it from the CLI
    shown = subprocess.run(
        [*SWEETSPOT, "report", str(sweep)], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert shown.returncode == 0, shown.stderr
    table = pd.read_csv(sweep / "report.csv")
    assert sorted(table["override/selection"]) == ["max_min", "sweet_spot"]
    assert (table["status"] == "ok").all(), table.get("error")
    for job in ("0", "1"):
        assert re.search(rf"^\| {job} +\| ok +\|", shown.stdout, re.M), job
    keys = [json.loads((sweep / j / "stages.json").read_text())["sample"] for j in ("0", "1")]
    assert keys[0]["key"] == keys[1]["key"]  # both jobs used one sample entry
    assert sorted(k["reused"] for k in keys) == [False, True]  # and it was computed once


def test_racing_jobs_compute_a_stage_once(tmp_path: Path) -> None:
    env = env_with_cache(tmp_path / "fresh-cache")
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        subprocess.Popen(
            [*SWEETSPOT, *TINY, f"hydra.run.dir={run}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run in runs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, err[-3000:]
    stages = [json.loads((run / "stages.json").read_text()) for run in runs]
    assert stages[0]["sample"]["key"] == stages[1]["sample"]["key"]
    assert sorted(s["sample"]["reused"] for s in stages) == [False, True]
    a, b = (pd.read_parquet(run / "responses.parquet") for run in runs)
    assert a["response"].tolist() == b["response"].tolist()
    assert a["reward"].tolist() == b["reward"].tolist()


def test_failed_job_is_reported_and_the_sweep_finishes(tmp_path: Path) -> None:
    # min/max puts the rejected position above the chosen one: job 1's config is invalid.
    sweep = local_sweep(tmp_path, "selection.pair=max/mu-2sigma,min/max")
    table = collect(sweep).set_index("job")
    assert table.loc["0", "status"] == "ok"
    assert table.loc["1", "status"] == "failed"
    assert "rejected" in table.loc["1", "error"] and "min/max" in table.loc["1", "overrides"]
    markdown = (sweep / "report.md").read_text()
    assert re.search(r"^\| 0 +\| ok +\|", markdown, re.M)
    assert re.search(r"^\| 1 +\| failed +\|", markdown, re.M)


def test_slurm_preset_becomes_the_sbatch_script(tmp_path: Path) -> None:
    """No cluster here: render the batch script submitit would submit from the preset's values
    (submitit's own renaming of the plugin's fields, then its own sbatch template)."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                f"hydra.sweep.dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    names = SlurmExecutor._equivalence_dict()
    params = {
        names.get(k, k): v
        for k, v in launcher.params.items()
        if k not in ("submitit_folder", "max_num_timeout")
    }
    params["mem"] = _convert_mem(params["mem"])
    script = _make_sbatch_string(command="python job.py", folder=tmp_path, map_count=32, **params)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=240",
        "#SBATCH --array=0-31%16",  # a 32-job sweep, 16 at a time
        "export OMP_NUM_THREADS=8",  # the setup line, its interpolation resolved
    ):
        assert line in script, line
    assert launcher.params["max_num_timeout"] >= 1  # a timed-out job is requeued and resumes
