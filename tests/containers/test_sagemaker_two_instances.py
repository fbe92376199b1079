"""The train image run as SageMaker runs a two-instance job: two containers as two torchrun nodes
(algo-1 and algo-2 on one Docker network, rendezvous at algo-1, Gloo on CPU), started the way
the SDK v3's torchrun driver starts them (`torchrun --nnodes 2 --nproc_per_node P --master_addr
algo-1 --master_port 7777 --node_rank i sagemaker_entry.py --hyperparameter value ...`). The
training channel is sharded by S3 key: each instance holds only its own objects of a split cut into
several files, and says so in /opt/ml/input/config/inputdataconfig.json; validation is
replicated. Every training row is read exactly once per epoch (the run summary counts them per
node and per process), and only algo-1's rank 0 writes the model."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.conftest import docker, sagemaker_training_env

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

HOSTS = ("algo-1", "algo-2")
PROCESSES_PER_NODE = 2
MASTER_PORT = 7777  # the SDK's SM_MASTER_PORT
# Objects of the training prefix, in key order, with their rows: uneven on purpose.
OBJECT_ROWS = (50, 30, 45, 35, 40)
HYPERPARAMETERS = {
    "model": "/opt/ml/input/data/model",
    "epochs": "2",
    "batch_size": "8",
    "log_every": "5",
    "num_workers": "0",
    "checkpoint_every": "0",
    "seed": "7",
}


def sharded_by_key(keys: list[str], hosts: int) -> list[list[str]]:
    """The objects each instance gets with ShardedByS3Key: about 1/n of the objects each,
    dealt out over the keys in order (SageMaker documents the share, not the dealing)."""
    return [sorted(keys)[host::hosts] for host in range(hosts)]


def node_job(root: Path, host: str, objects: dict[str, list[str]], shards: list[str]) -> Path:
    """/opt/ml as SageMaker lays it out on instance ``host`` of the job."""
    ml = root / host
    train = ml / "input" / "data" / "train"
    train.mkdir(parents=True)
    for key in shards:
        (train / key).write_text("".join(objects[key]))
    config = ml / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": host, "hosts": list(HOSTS), "network_interface_name": "eth0"})
    )
    channel = {"TrainingInputMode": "File", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {
                "train": channel | {"S3DistributionType": "ShardedByS3Key"},
                "validation": channel | {"S3DistributionType": "FullyReplicated"},
                "model": channel | {"S3DistributionType": "FullyReplicated"},
            }
        )
    )
    for folder in ("model", "checkpoints", "output"):
        (ml / folder).mkdir()
    return ml


def run_args(ml: Path, image: str, name: str, network: str, host: str) -> list[str]:
    env = sagemaker_training_env(HYPERPARAMETERS, list(HOSTS), host) | {
        "SM_MASTER_ADDR": HOSTS[0],
        "SM_MASTER_PORT": str(MASTER_PORT),
        "GLOO_SOCKET_IFNAME": "eth0",
    }
    environment = [part for k, v in env.items() for part in ("-e", f"{k}={v}")]
    torchrun = [
        f"--nnodes={len(HOSTS)}",
        f"--nproc_per_node={PROCESSES_PER_NODE}",
        f"--master_addr={HOSTS[0]}",
        f"--master_port={MASTER_PORT}",
        f"--node_rank={HOSTS.index(host)}",
        "/opt/starrating/training/sagemaker_entry.py",
    ]
    arguments = [part for k, v in HYPERPARAMETERS.items() for part in (f"--{k}", v)]
    return [
        "run", "-d", "--name", name, "--network", network, "--hostname", host,
        "--network-alias", host, "-v", f"{ml}:/opt/ml", *environment,
        "--entrypoint", "torchrun", image, *torchrun, *arguments,
    ]  # fmt: skip


@pytest.fixture
def network() -> Iterator[str]:
    name = f"starrating-ci-sm-{int(time.time())}"
    docker("network", "create", name)
    try:
        yield name
    finally:
        docker("network", "rm", name, check=False)


def test_two_instances_read_every_row_once_per_epoch_and_only_rank_0_writes_the_model(
    images: dict[str, str],
    network: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_data_dir: Path,
) -> None:
    rows = (tiny_data_dir / "train.jsonl").read_text().splitlines(keepends=True)
    assert len(rows) == sum(OBJECT_ROWS)
    objects: dict[str, list[str]] = {}
    start = 0
    for number, count in enumerate(OBJECT_ROWS):
        objects[f"part-{number:05d}.jsonl"] = rows[start : start + count]
        start += count
    shards = sharded_by_key(list(objects), len(HOSTS))
    node_rows = [sum(len(objects[key]) for key in keys) for keys in shards]
    jobs = {}
    for host, keys in zip(HOSTS, shards, strict=True):
        ml = node_job(tmp_path, host, objects, keys)
        shutil.copytree(tiny_model_dir, ml / "input" / "data" / "model")
        (ml / "input" / "data" / "validation").mkdir()
        shutil.copy(tiny_data_dir / "validation.jsonl", ml / "input" / "data" / "validation")
        jobs[host] = ml

    names = {host: f"{network}-{host}" for host in HOSTS}
    started = time.monotonic()
    try:
        for host in HOSTS:
            docker(*run_args(jobs[host], images["train"], names[host], network, host))
        codes = {
            host: int(docker("wait", names[host], timeout=900).stdout.strip()) for host in HOSTS
        }
        seconds = time.monotonic() - started
        logs = {
            host: docker("logs", names[host]).stderr + docker("logs", names[host]).stdout
            for host in HOSTS
        }
    finally:
        for host in HOSTS:
            docker("rm", "-f", names[host], check=False)
    for host in HOSTS:
        assert codes[host] == 0, f"{host}:\n{logs[host][-4000:]}"

    # Only rank 0 (on algo-1) writes the model and the run summary; algo-2's model dir, the
    # one SageMaker would upload from that instance, stays empty.
    assert (jobs["algo-1"] / "model" / "model" / "model.safetensors").is_file()
    assert list((jobs["algo-2"] / "model").iterdir()) == []
    assert not list((jobs["algo-2"] / "checkpoints").iterdir())

    summary = json.loads((jobs["algo-1"] / "model" / "metrics.json").read_text())
    assert summary["train_sharded_per_node"] is True
    assert summary["world_size"] == len(HOSTS) * PROCESSES_PER_NODE
    # Each node's processes divide exactly that node's rows (line i to local rank i % P).
    per_rank = [
        len(range(local_rank, rows_here, PROCESSES_PER_NODE))
        for rows_here in node_rows
        for local_rank in range(PROCESSES_PER_NODE)
    ]
    expected = {"rows": len(rows), "per_node": node_rows, "per_rank": per_rank}
    assert summary["train_rows_planned"] == len(rows)
    assert [epoch["epoch"] for epoch in summary["train_rows_read"]] == [1, 2]
    for epoch in summary["train_rows_read"]:
        assert {k: epoch[k] for k in expected} == expected
    assert f"epoch 2 read {len(rows)} training rows" in logs["algo-1"]
    print(  # the measurement the README quotes, shown with pytest -s
        f"two instances x {PROCESSES_PER_NODE} processes: rows per node {node_rows}, "
        f"per process {per_rank}, {seconds:.0f} s from start to both exits"
    )
