"""Rank-parallel stages (``sweetspot.distributed``): a run started by torchrun runs the pipeline
on every rank, the sharded stages split their shards, and the result equals a one-process run's.

- the cache protocol with two real gloo ranks (``tests/ranks_worker.py``): a sharded stage is
  split, assembled once and read by both ranks; rank 0's failure in a rank-0 stage reaches rank
  1 as an error naming it;
- the CLI end to end: ``torchrun --nproc_per_node 2 -m sweetspot experiment=tiny trainer=ddp
  trainer.accelerator=cpu trainer.devices=2`` (a tiny reward model as the scorer, so that
  sample, score and the evaluation answers are all sharded) gives the pairs of a one-process
  ``sweetspot`` run of the same config, and records each rank's share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweetspot.distributed import SOLO, Ranks, engine_gpus, launcher_environment, rank_gpus

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
WORKER = Path(__file__).parent / "ranks_worker.py"
# Small on purpose: 8 train prompts in 4 sample shards, 2 held-out prompts in 2 answer shards,
# 8 prompts in 4 score shards; one training step.
TINY = [
    "experiment=tiny", "task.max_train=8", "task.max_heldout=2", "sampler.n=4",
    "sampler.max_new_tokens=8", "sampler.shard_size=2", "trainer.max_steps=1",
    "evaluation.max_new_tokens=8", "++evaluation.shard_size=1", "scorer=reward_model",
    "scorer.shard_prompts=2", "scorer.max_length=256",
]


def env_for(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_"))}
    return {**env, "SWEETSPOT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def test_one_process_is_solo_and_rank_gpus_take_their_block() -> None:
    assert launcher_environment() is None  # pytest is no torchrun rank
    assert SOLO.split([3, 5]) == [3, 5] and SOLO.shares(2) == {} and SOLO.main
    assert list(SOLO.owner()(3)) == [0, 1, 2]
    node = [str(i) for i in range(8)]
    # torchrun: every rank sees the node's 8 GPUs; 4 ranks of 2 GPUs each take their block
    assert rank_gpus(node, 2, 4, 2) == ["4", "5"]
    # srun --gpus-per-task=2: the rank sees its own two, whatever its local rank
    assert rank_gpus(["6", "7"], 3, 4, 2) == ["6", "7"]
    assert rank_gpus(node, 0, 1, 2) == node  # one rank: all it sees (gpu_groups checks counts)
    other = Ranks(rank=1, world=3)
    assert not other.main and other.many


def test_an_engine_starts_on_its_ranks_gpus_and_the_view_comes_back(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    second = Ranks(rank=1, world=2, local_rank=1, local_world=2)
    with engine_gpus(2, second) as gpus:  # torchrun, 2 ranks on a 4-GPU node, TP 2
        assert gpus == ["2", "3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # Lightning picks cuda:1 among all
    with engine_gpus(2, SOLO) as gpus:  # one process: nothing changes
        assert gpus == ["0", "1", "2", "3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RuntimeError), engine_gpus(1, second):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # this CPU machine sees no GPU
        raise RuntimeError("the engine failed to start")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # unset again, even after an error


@pytest.mark.slow
def test_cache_protocol_with_two_gloo_ranks(tmp_path: Path) -> None:
    proc = subprocess.run([*TORCHRUN, str(WORKER), "--cache", str(tmp_path / "cache"),
                           "--out", str(tmp_path)], env=env_for(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2] and [s["local_world"] for s in seen] == [2, 2]
    assert seen[0]["entry"] == seen[1]["entry"]  # one committed entry, read by both
    expected = "\n".join(f"shard {i} by rank {i % 2}" for i in range(5))  # round robin
    assert seen[0]["all"] == seen[1]["all"] == expected
    assert seen[0]["counts"] == {"shards/rank0": 3, "shards/rank1": 2}
    assert not list((tmp_path / "cache" / "demo").glob("*.partial"))  # cleaned after commit
    assert not list((tmp_path / "cache" / "demo").glob("*.rank1-*"))  # scratch removed
    assert seen[0]["boom"] == "ValueError: no such column 'reward'"
    assert seen[1]["boom"] == ("SweetspotError: stage boom: rank 0 failed: "
                               "ValueError: no such column 'reward'")


def save_tiny_reward_model(path: Path) -> Path:
    """A 2-layer sequence-classification Llama with the tiny policy's byte-level tokenizer (and
    its chat template), seed 0, saved for ``from_pretrained``."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sweetspot.models import byte_level_tokenizer

    tok = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, num_labels=1,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # scores that differ visibly between responses
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_one_process_pairs(tmp_path: Path) -> None:
    rm = save_tiny_reward_model(tmp_path / "rm")
    args = [*TINY, f"scorer.name_or_path={rm}"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    # The ranks start on an empty cache: rank 0 builds the tiny model's folder, rank 1 waits
    # for it (transformers writes weights on rank 0 only once a process group exists).
    two = subprocess.Popen(
        [*TORCHRUN, "-m", "sweetspot", *args, *ddp, f"hydra.run.dir={tmp_path / 'two'}"],
        env=env_for(tmp_path / "cache-two"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    one = subprocess.run(
        [sys.executable, "-m", "sweetspot", *args, "until=select",
         f"hydra.run.dir={tmp_path / 'one'}"],
        env=env_for(tmp_path / "cache-one"), capture_output=True, text=True, timeout=600,
    )
    _, err = two.communicate(timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    # A failing rank's own error comes first; the tail is the launcher's report of it.
    assert two.returncode == 0, f"{first_error(err)}\n...\n{err[-1500:]}"

    for name in ("responses.parquet", "pairs.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "two" / name),
                                      pd.read_parquet(tmp_path / "one" / name))
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # 8 train prompts in shards of 2: 4 sample shards, split 2 + 2 (rank 0's list, every other);
    # score shards of 2 prompts: 4, split 2 + 2; 2 held-out prompts in shards of 1: 1 + 1
    for stage, shards in (("sample", 4), ("score", 4), ("answers_reference", 2),
                          ("answers_trained", 2)):
        shares = [metrics[f"{stage}/shards/rank{k}"] for k in (0, 1)]
        assert shares == [shards // 2, shards // 2], (stage, shares)
    assert metrics["train/steps"] == 1 and "eval/win_rate" in metrics  # rank 0 evaluated
    assert (tmp_path / "two" / "checkpoint" / "config.json").is_file()
    stages = json.loads((tmp_path / "two" / "stages.json").read_text())
    assert not list((tmp_path / "cache-two").glob("*/*.rank*-*"))  # no scratch left behind
    assert Path(stages["sample"]["path"]).is_dir()


def test_slurm_preset_spans_nodes(tmp_path: Path) -> None:
    """No cluster here: the batch script submitit would submit for one job of 2 nodes x 4 ranks,
    one GPU per rank (submitit's own renaming of the plugin's fields and its sbatch template)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    from sweetspot.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[
            "hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4",
            "hydra.launcher.gpus_per_node=null", "hydra.launcher.gpus_per_task=1",
            f"hydra.sweep.dir={tmp_path}",
        ], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    names = SlurmExecutor._equivalence_dict()
    params = {names.get(k, k): v for k, v in launcher.params.items()
              if k not in ("submitit_folder", "max_num_timeout")}
    params["mem"] = _convert_mem(params["mem"])
    script = _make_sbatch_string(command="python job.py", folder=tmp_path, **params)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-task=1",
                 "export SLURM_KILL_BAD_EXIT=1", "srun --unbuffered"):
        assert line in script, line
    assert "--gpus-per-node" not in script


def first_error(stderr: str, context: int = 2500) -> str:
    """The stderr of a torchrun job from its first traceback on: the rank that failed first,
    not the peers that lost their connection to it."""
    start = stderr.find("Traceback")
    return stderr[start:start + context] if start >= 0 else stderr[:context]
