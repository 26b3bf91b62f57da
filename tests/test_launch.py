"""The launch/ files parse with the tools that read them."""

import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

LAUNCH = Path(__file__).resolve().parents[1] / "launch"

EXPECTED = {  # file: (distributed type, mixed precision, processes, machines)
    "1gpu_fp16.yaml": ("NO", "fp16", 1, 1),
    "1gpu_bf16.yaml": ("NO", "bf16", 1, 1),
    "8gpu_fp16.yaml": ("MULTI_GPU", "fp16", 8, 1),
    "2node_8gpu_fp16.yaml": ("MULTI_GPU", "fp16", 16, 2),
    "2cpu.yaml": ("MULTI_GPU", "no", 2, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_configs_parse_with_accelerates_loader(name):
    cfg = load_config_from_file(str(LAUNCH / "accelerate" / name))
    kind, precision, processes, machines = EXPECTED[name]
    assert str(getattr(cfg.distributed_type, "value", cfg.distributed_type)) == kind
    assert str(getattr(cfg.mixed_precision, "value", cfg.mixed_precision)) == precision
    assert (cfg.num_processes, cfg.num_machines) == (processes, machines)


def test_every_accelerate_config_is_expected():
    assert {p.name for p in (LAUNCH / "accelerate").glob("*.yaml")} == set(EXPECTED)


def test_slurm_script_is_valid_bash_and_uses_slurm_variables():
    script = LAUNCH / "slurm" / "train_multinode.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in ("SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_NNODES", "--machine_rank", "--main_process_ip",
                   "accelerate launch", "-m timm_tricks train", "launch/accelerate/2node_8gpu_fp16.yaml"):
        assert needle in text
    assert yaml.safe_load((LAUNCH / "accelerate" / "2node_8gpu_fp16.yaml").read_text())["num_machines"] == 2


def test_ray_cluster_files_parse():
    cluster = yaml.safe_load((LAUNCH / "ray" / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert {"provider", "head_start_ray_commands", "worker_start_ray_commands"} <= set(cluster)
    kuberay = yaml.safe_load((LAUNCH / "ray" / "kuberay.yaml").read_text())
    assert kuberay["apiVersion"] == "ray.io/v1" and kuberay["kind"] == "RayCluster"
    workers = kuberay["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in workers["resources"]["limits"]
    assert "launch/ray/cluster.yaml" in (LAUNCH / "README.md").read_text()


def test_ray_cluster_files_require_a_token_and_keep_the_dashboard_on_loopback():
    cluster = yaml.safe_load((LAUNCH / "ray" / "cluster.yaml").read_text())
    starts = cluster["head_start_ray_commands"][1:] + cluster["worker_start_ray_commands"][1:]
    assert starts and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "0.0.0.0" not in (LAUNCH / "ray" / "cluster.yaml").read_text()
    assert cluster["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    kuberay = yaml.safe_load((LAUNCH / "ray" / "kuberay.yaml").read_text())
    pods = [kuberay["spec"]["headGroupSpec"]] + kuberay["spec"]["workerGroupSpecs"]
    for pod in pods:
        assert "dashboard-host" not in pod["rayStartParams"]
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "timm-tricks-ray-token"
