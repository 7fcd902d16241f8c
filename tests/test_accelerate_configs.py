"""The Accelerate launch configs in configs/accelerate/ parse and validate as `accelerate launch` reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from torch.distributed.fsdp import ShardingStrategy, StateDictType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def _launch_environment(name: str) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file NAME -m mimaface.train ...` checks and hands its processes."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "-m", "mimaface.train",
                                               "--config", "configs/sd15.yaml", "--stage", "1"])
    _validate_launch_command(args)
    return args, prepare_multi_gpu_env(args)


def test_multi_gpu_config_launches_eight_bf16_processes() -> None:
    config = load_config_from_file(str(CONFIGS / "multi_gpu.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU
    args, env = _launch_environment("multi_gpu.yaml")
    assert args.multi_gpu and not args.use_fsdp and args.num_processes == 8 and args.num_machines == 1
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_USE_FSDP" not in env


def test_fsdp_config_builds_accelerates_fsdp_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    args, env = _launch_environment("fsdp.yaml")
    assert args.use_fsdp and args.num_processes == 8 and env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # sync_module_states makes the plugin build its parameter-init function on the GPU; without one,
    # everything else is validated.
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.use_orig_params is True
    assert plugin.transformer_cls_names_to_wrap == ["BasicTransformerBlock", "ResnetBlock2D", "CLIPEncoderLayer"]


def test_wrapped_layer_classes_exist_in_the_sd15_model() -> None:
    """FSDP wraps layers by class name: each class the config names occurs in the sd15 network (meta device)."""
    import torch

    from mimaface.models import MIMAFaceConfig, MIMAFaceModel

    names = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    with torch.device("meta"):
        model = MIMAFaceModel(MIMAFaceConfig.sd15())
    present = {type(m).__name__ for m in model.modules()}
    assert set(names.split(",")) <= present
